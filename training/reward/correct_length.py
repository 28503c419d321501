"""Post-hoc length correction of an existing bundle: what `rlhf correct-length` does, torch-free.

    result = correct_bundle_length("bundles/imported", CorrectionConfig(pairs=256))           # in place
    result = correct_bundle_length("bundles/rm-v1", CorrectionConfig(), out="bundles/rm-v1-lc")  # new dir
    print(json.dumps(result.to_dict())); print(result.format_text())

Why a command of its own: `rlhf export --length-correction` corrects only bundles exported here, at
export time. A bundle exported earlier, or imported from elsewhere, has the same length bias and no
training run to export again; its own graph and encoder are enough to fit the trend (Huang et al. 2025).

Steps: verify the bundle (a manifest that is not intact is refused: `load_bundle` checks every sha256);
choose calibration and held-out pairs (below); score both answers of each with the bundle's own
encoder (pair or chat) and graph (`length_correction.score_bundle_pairs`); fit score ~ a + b * answer
tokens on the calibration pairs; measure the held-out pairs as served before and after; write the
manifest with the new ``length_correction`` entry (and ``length_correction_fit``, what it was fitted on
and what it did), atomically, with the same ``files`` hashes (`manifest_rewrite.rewrite_manifest`).

Which pairs: when the data is the bundle's own training data (its manifest's ``training_config`` names
it, and None is the embedded pairs), its run's split is re-created (`data.split_pairs`) so the fit uses
training pairs, as the export does, and the held-out pairs are its validation pairs, never trained on.
Otherwise a seeded content hash holds out ``heldout_pairs`` pairs and the fit uses the rest; whether
the model saw them in training is then unknown, and the report says which split was used.

The served scores change, so the version must: by default ``<version>-lc<6 hex of the entry>``, so a
trainer that watches the version (`service.client`'s ``model_changed``) notices a corrected bundle.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle, Precision, load_bundle, utc_now
from training.reward.correction_config import CorrectionConfig
from training.reward.data import PreferencePair, load_pairs, split_pairs
from training.reward.evaluate import LENGTH_METRICS, evaluate_scores
from training.reward.length_correction import (
    LengthCorrection,
    PairScores,
    fit_length_correction,
    score_bundle_pairs,
)
from training.reward.manifest_rewrite import rewrite_manifest

FIT_RECORD = "length_correction_fit"  # manifest key: what the correction was fitted on and what it did
CORRECTED_VERSION = re.compile(r"-lc[0-9a-f]{6}$")  # the suffix a default version gets (replaced on a refit)
HOLDOUT_SEED = 0  # the content-hash split of data that is not the bundle's own training data


class CorrectionError(ValueError):
    """The bundle cannot be corrected as asked; the message says why (the bundle is left unchanged)."""


@dataclass(frozen=True)
class PairChoice:
    """The pairs the trend is fitted on, the pairs it is judged on, and how they were chosen."""

    calibration: list[PreferencePair]
    heldout: list[PreferencePair]
    split: str


@dataclass
class CorrectionResult:
    """One correction: ``to_dict`` is the command's JSON line, ``format_text`` its human line."""

    bundle: str  # the corrected bundle
    source: str  # the bundle it was fitted for (the same directory when corrected in place)
    in_place: bool
    version_before: str
    version_after: str
    length_correction: dict[str, Any]  # the new manifest entry
    replaced: dict[str, Any] | None  # the entry it replaced, if any
    data: str
    split: str
    precision: str
    calibration_pairs: int
    heldout_pairs: int
    before: dict[str, Any]  # held-out metrics of the scores as served before (old correction included)
    after: dict[str, Any]  # the same with the new correction
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        b, a = self.before, self.after
        where = "in place" if self.in_place else f"from {self.source}"
        return (
            f"wrote {self.bundle} ({where}; version {self.version_before} -> {self.version_after}): "
            f"slope {self.length_correction['slope']:+.3g} per answer token on "
            f"{self.length_correction['fitted_on']} answers; held-out {self.heldout_pairs} pairs, before -> "
            f"after: Pearson(score, answer tokens) {_corr(b['length_pearson'])} -> {_corr(a['length_pearson'])}"
            f", accuracy {_pct(b['accuracy'])} -> {_pct(a['accuracy'])}, chosen longer / shorter "
            f"{_pct(b['chosen_longer']['accuracy'])} / {_pct(b['chosen_shorter']['accuracy'])} -> "
            f"{_pct(a['chosen_longer']['accuracy'])} / {_pct(a['chosen_shorter']['accuracy'])}"
            f", length-balanced {_pct(b['length_balanced_accuracy'])} -> {_pct(a['length_balanced_accuracy'])}"
        )


def correct_bundle_length(
    bundle_dir: str | Path, config: CorrectionConfig | None = None, out: str | Path | None = None
) -> CorrectionResult:
    """Fit, judge and write the length correction of the bundle at ``bundle_dir`` (``out`` None: in place).

    Raises a `service.bundle.BundleError` for a bundle that is not intact, a `training.reward.data.DataError`
    for unreadable data, a `manifest_rewrite.RewriteError` when the manifest cannot be rewritten (``out``
    exists), a `CorrectionError` for anything else that stops the correction."""
    started = time.perf_counter()
    config = config or CorrectionConfig()
    bundle = load_bundle(bundle_dir)
    precision: Precision = "int8" if config.precision == "int8" else "fp32"
    bundle.model_path(precision)  # a BundleError names what is missing before any scoring
    report = load_pairs(config.data)
    choice = choose_pairs(report.pairs, config, bundle.manifest.training_config)
    calibration = _score(bundle, choice.calibration, precision, config)
    try:
        fit = fit_length_correction(calibration.scores, calibration.tokens)
    except ValueError as exc:
        raise CorrectionError(f"{bundle.path}: {exc}") from exc
    heldout = _score(bundle, choice.heldout, precision, config)
    old = bundle.manifest.length_correction
    replaced = old.model_dump() if old is not None else None
    served_before = (
        LengthCorrection.from_dict(replaced).apply(heldout.scores, heldout.tokens)
        if replaced is not None
        else heldout.scores
    )
    before = heldout_metrics(choice.heldout, served_before, heldout)
    after = heldout_metrics(choice.heldout, fit.apply(heldout.scores, heldout.tokens), heldout)
    entry = fit.to_dict()
    version = _new_version(bundle.manifest.version, entry, config.version, replaced)
    record = {
        "config": config.to_dict(),
        "data": report.source,
        "split": choice.split,
        "calibration_pairs": len(choice.calibration),
        "fitted": utc_now(),
        "previous_version": bundle.manifest.version,
        "heldout": {"pairs": len(choice.heldout), "before": _brief(before), "after": _brief(after)},
    }
    written = rewrite_manifest(
        bundle, {"length_correction": entry, "version": version, FIT_RECORD: record}, out
    )
    return CorrectionResult(
        bundle=str(written.path),
        source=str(bundle.path),
        in_place=written.path.resolve() == bundle.path.resolve(),
        version_before=bundle.manifest.version,
        version_after=written.manifest.version,
        length_correction=entry,
        replaced=replaced,
        data=report.source,
        split=choice.split,
        precision=precision,
        calibration_pairs=len(choice.calibration),
        heldout_pairs=len(choice.heldout),
        before=before,
        after=after,
        seconds=time.perf_counter() - started,
    )


def choose_pairs(
    pairs: Sequence[PreferencePair], config: CorrectionConfig, training_config: Mapping[str, Any]
) -> PairChoice:
    """Calibration and held-out pairs from ``pairs`` (module docstring, "Which pairs")."""
    if len(pairs) < 4:
        raise CorrectionError(f"{len(pairs)} pairs: a fit and a held-out report need at least 4")
    own = _own_split(config.data, training_config)
    if own is not None:
        val_fraction, seed = own
        fit_pool, held_pool = split_pairs(pairs, val_fraction, seed)
        split = (
            f"the bundle's own training split (val_fraction {val_fraction}, seed {seed}): fitted on "
            "training pairs, judged on validation pairs"
        )
    else:
        held = min(config.heldout_pairs, len(pairs) // 2)
        fit_pool, held_pool = split_pairs(pairs, held / len(pairs), HOLDOUT_SEED)
        split = (
            f"{held} pairs held out by a content hash (seed {HOLDOUT_SEED}), fitted on the other "
            f"{len(fit_pool)}; not known to be unseen by the model"
        )
    return PairChoice(_spread(fit_pool, config.pairs), _spread(held_pool, config.heldout_pairs), split)


def heldout_metrics(
    pairs: Sequence[PreferencePair], scores: np.ndarray, scored: PairScores
) -> dict[str, Any]:
    """`rlhf eval`'s accuracy and length metrics of ``scores`` [2n] (chosen first) on ``pairs``."""
    n = len(pairs)
    tokens = (scored.tokens[:n], scored.tokens[n:])
    truncated = (scored.truncated[:n] | scored.truncated[n:]).tolist()
    metrics = evaluate_scores(pairs, scores[:n], scores[n:], truncated, tokens)
    keep = ("accuracy", "mean_margin", *LENGTH_METRICS)
    return {k: asdict(v) if k.startswith("chosen_") else v for k, v in metrics.items() if k in keep}


def _score(
    bundle: Bundle, pairs: Sequence[PreferencePair], precision: Precision, config: CorrectionConfig
) -> PairScores:
    scored = score_bundle_pairs(bundle, pairs, precision, config.batch_size, config.threads)
    bad = int((~np.isfinite(scored.scores)).sum())
    if bad:
        raise CorrectionError(f"{bundle.path}: the {precision} graph gave {bad} non-finite scores")
    return scored


def _own_split(data: str | None, training_config: Mapping[str, Any]) -> tuple[float, int] | None:
    """(val_fraction, seed) of the bundle's training run when ``data`` is its training data, else None."""
    if "data" not in training_config:
        return None
    trained_on, val_fraction, seed = (training_config.get(k) for k in ("data", "val_fraction", "seed"))
    same = (
        trained_on is None
        if data is None
        else isinstance(trained_on, str) and Path(trained_on).resolve() == Path(data).resolve()
    )
    if not same or not isinstance(val_fraction, int | float) or not isinstance(seed, int):
        return None
    return (float(val_fraction), seed) if 0.0 < val_fraction < 1.0 else None


def _spread(pairs: Sequence[PreferencePair], n: int) -> list[PreferencePair]:
    """``n`` pairs evenly spaced over ``pairs`` (all when n <= 0 or n >= len): deterministic, same mix."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n).round().astype(int)]


def _new_version(
    old: str, entry: Mapping[str, Any], given: str | None, replaced: Mapping[str, Any] | None
) -> str:
    if given is not None:
        if given == old and dict(entry) != replaced:
            raise CorrectionError(
                f"--version {given} is the bundle's current version, but its served scores change: a trainer "
                "would not notice; give another version"
            )
        return given
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode("utf-8")).hexdigest()[:6]
    return f"{CORRECTED_VERSION.sub('', old)}-lc{digest}"


def _brief(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "length_pearson")}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _corr(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"
