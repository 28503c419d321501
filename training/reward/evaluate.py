"""Evaluate a bundle on preference pairs with onnxruntime: what `rlhf eval` prints.

    report = evaluate_bundle("bundles/rm-v1", data="heldout.jsonl.gz", precision="int8")
    print(report.format_text())           # or json.dumps(report.to_dict())

torch-free on purpose (numpy, tokenizers, onnxruntime): a bundle is judged by the graph that will be
served, encoded by the service's own encoder, so the number `rlhf eval` prints is the number users get.

Metrics: pairwise accuracy (a tie counts as wrong: a reward that cannot tell two answers apart gave
no preference), mean margin r_chosen - r_rejected, truncation rate (pairs where either side was
cut), and a length-bias line: accuracy where the chosen answer is the longer one vs the shorter one
(characters). A model that learned "longer is better" shows a large gap between the two.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Precision, load_bundle
from service.encoding import EncodedPair
from service.onnx_scoring import make_session, score_encoded
from training.reward.batching import encode_pairs
from training.reward.data import PreferencePair, load_pairs


@dataclass(frozen=True)
class SubsetAccuracy:
    pairs: int
    accuracy: float | None  # None when the subset is empty


@dataclass
class EvalReport:
    """One evaluation of one graph on one data set; ``to_dict`` is the `--json` output."""

    bundle: str
    data: str
    precision: str
    pairs: int
    skipped: int
    accuracy: float
    mean_margin: float
    truncated: int  # pairs whose chosen or rejected sequence was cut
    truncation_rate: float
    chosen_longer: SubsetAccuracy
    chosen_shorter: SubsetAccuracy
    seconds: float
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}%"

        skipped = f" (skipped {self.skipped}: {self.skipped_reasons})" if self.skipped else ""
        return "\n".join(
            [
                f"bundle    {self.bundle} [{self.precision}]",
                f"data      {self.data}: {self.pairs} pairs{skipped}",
                f"accuracy  {pct(self.accuracy)}  (ties count as wrong)",
                f"margin    {self.mean_margin:+.4f}  (mean r_chosen - r_rejected)",
                f"truncated {self.truncated} pairs ({pct(self.truncation_rate)})",
                f"length    chosen longer: {pct(self.chosen_longer.accuracy)} of {self.chosen_longer.pairs}"
                f" | chosen shorter: {pct(self.chosen_shorter.accuracy)} of {self.chosen_shorter.pairs}",
                f"time      {self.seconds:.1f}s ({self.pairs / max(self.seconds, 1e-9):.1f} pairs/s)",
            ]
        )


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Fraction of pairs with r_chosen > r_rejected, strictly: ties are wrong."""
    if len(chosen) == 0:
        raise ValueError("pairwise accuracy of zero pairs is undefined")
    return float(np.mean(chosen > rejected))


def score_pair_sides(
    session: Any,
    input_names: Sequence[str],
    chosen: Sequence[EncodedPair],
    rejected: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen [n], r_rejected [n]): both sides scored together in length-sorted batches."""
    scores = score_encoded(session, input_names, [*chosen, *rejected], pad_token_id, batch_size)
    return scores[: len(chosen)], scores[len(chosen) :]


def evaluate_scores(
    pairs: Sequence[PreferencePair],
    chosen_scores: np.ndarray,
    rejected_scores: np.ndarray,
    truncated: Sequence[bool],
) -> dict[str, Any]:
    """The metrics of EvalReport from scores already computed (shared by eval and the export gate)."""
    correct = chosen_scores > rejected_scores
    longer = np.array([len(p.chosen) > len(p.rejected) for p in pairs])
    shorter = np.array([len(p.chosen) < len(p.rejected) for p in pairs])

    def subset(mask: np.ndarray) -> SubsetAccuracy:
        n = int(mask.sum())
        return SubsetAccuracy(n, float(correct[mask].mean()) if n else None)

    n_truncated = int(sum(truncated))
    return {
        "pairs": len(pairs),
        "accuracy": pairwise_accuracy(chosen_scores, rejected_scores),
        "mean_margin": float(np.mean(chosen_scores - rejected_scores)),
        "truncated": n_truncated,
        "truncation_rate": n_truncated / len(pairs),
        "chosen_longer": subset(longer),
        "chosen_shorter": subset(shorter),
    }


def evaluate_bundle(
    bundle_dir: str | Path,
    data: str | Path | None = None,
    precision: Precision | None = None,
    batch_size: int = 32,
    threads: int = 2,
    limit: int = 0,
) -> EvalReport:
    """Verify and load the bundle, score every pair of ``data`` (None = embedded pairs), report.

    ``precision`` None uses the bundle's default (int8 when it shipped). ``limit`` > 0 evaluates only
    the first ``limit`` pairs.
    """
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    chosen_precision = precision or bundle.default_precision()
    model_path = bundle.model_path(chosen_precision)  # BundleError names what is missing
    report = load_pairs(data)
    pairs = report.pairs[:limit] if limit > 0 else report.pairs
    encoder = bundle.encoder()
    chosen, rejected = encode_pairs(encoder, pairs)
    session = make_session(model_path, threads)
    r_c, r_r = score_pair_sides(
        session, bundle.manifest.input_names, chosen, rejected, encoder.pad_token_id, batch_size
    )
    truncated = [c.truncated or r.truncated for c, r in zip(chosen, rejected, strict=True)]
    metrics = evaluate_scores(pairs, r_c, r_r, truncated)
    return EvalReport(
        bundle=str(bundle.path),
        data=report.source,
        precision=chosen_precision,
        skipped=report.skipped,
        skipped_reasons=report.skipped_reasons,
        seconds=time.perf_counter() - started,
        **metrics,
    )
