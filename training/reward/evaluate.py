"""Evaluate a bundle on preference pairs with onnxruntime: what `rlhf eval` prints.

    report = evaluate_bundle("bundles/rm-v1", data="heldout.jsonl.gz", precision="int8")
    print(report.format_text())           # or json.dumps(report.to_dict())

torch-free on purpose (numpy, tokenizers, onnxruntime): a bundle is judged by the graph that will be
served, encoded by the service's own encoder (``Bundle.encoder()``: pair, or chat with the bundle's
template), so the number `rlhf eval` prints is the number users get.

Metrics: pairwise accuracy (a tie counts as wrong: a reward that cannot tell two answers apart gave
no preference), mean margin r_chosen - r_rejected, truncation rate (pairs where either side was
cut), and the length bias: accuracy where the chosen answer is the longer one vs the shorter one
(characters; a model that learned "longer is better", or "shorter", shows a large gap between the
two), their mean (the length-balanced accuracy: see `length_balanced_accuracy`) beside the accuracy of
the rule "the shorter answer wins" on the same pairs, and the Pearson correlation of the score with
the answer's tokens, over every scored answer and within pairs (score difference vs token difference
of two answers to one question).
Graphs with several quality heads add how well their served uncertainty flags the pairs the model
gets wrong (AUROC, beside the AUROC of a small |margin|: diagnostics.py); graphs with a length head
add its own correlation with length. The scores judged are the served ones: when the manifest
carries a length correction (the service applies it), they are corrected, and the uncorrected
numbers are reported beside them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Precision, load_bundle
from service.onnx_scoring import LENGTH_OUTPUT, UNCERTAINTY_OUTPUT, make_session
from training.reward.batching import encode_pairs
from training.reward.data import LoadReport, PreferencePair, load_pairs
from training.reward.diagnostics import auroc, pair_uncertainty, paired_gain, pearson
from training.reward.heads import score_outputs
from training.reward.length_correction import LengthCorrection, answer_token_counts


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
    length_balanced_accuracy: float | None = None  # mean of the two accuracies above
    shorter_wins_accuracy: float | None = None  # the length rule "the shorter answer wins" on these pairs
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    input_format: str = "pair"  # how the bundle's encoder read the pairs (pair, or chat: its template)
    length_pearson: float | None = None  # Pearson(score, answer tokens) over both answers of every pair
    # Pearson(r_chosen - r_rejected, tokens_chosen - tokens_rejected): the length preference between two
    # answers to one question, the one a policy compared against its own samples can exploit
    length_pearson_in_pairs: float | None = None
    uncertainty_auroc: float | None = None  # pair uncertainty ranking the wrong pairs (ensembles only)
    margin_auroc: float | None = None  # a small |margin| ranking the wrong pairs: the baseline to beat
    length_head_pearson: float | None = None  # Pearson(length_score, answer tokens) (length head only)
    uncorrected: dict[str, Any] | None = None  # the metrics before the manifest's length correction
    # which pairs were ranked right, in data order: what a paired comparison of two bundles needs
    correct: list[bool] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object (without the per-pair ``correct`` list, which only comparisons use)."""
        out = asdict(self)
        out.pop("correct")
        return out

    def format_text(self) -> str:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}%"

        def corr(value: float | None) -> str:
            return "n/a" if value is None else f"{value:+.2f}"

        def auc(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        skipped = f" (skipped {self.skipped}: {self.skipped_reasons})" if self.skipped else ""
        lines = [
            f"bundle    {self.bundle} [{self.precision}, {self.input_format} format]",
            f"data      {self.data}: {self.pairs} pairs{skipped}",
            f"accuracy  {pct(self.accuracy)}  (ties count as wrong)",
            f"margin    {self.mean_margin:+.4f}  (mean r_chosen - r_rejected)",
            f"truncated {self.truncated} pairs ({pct(self.truncation_rate)})",
            f"length    chosen longer: {pct(self.chosen_longer.accuracy)} of {self.chosen_longer.pairs}"
            f" | chosen shorter: {pct(self.chosen_shorter.accuracy)} of {self.chosen_shorter.pairs}"
            f" | Pearson(score, answer tokens) {corr(self.length_pearson)}"
            f", within pairs {corr(self.length_pearson_in_pairs)}",
            f"balanced  {pct(self.length_balanced_accuracy)} length-balanced accuracy (the mean of the two above;"
            f' "the shorter answer wins" alone: {pct(self.shorter_wins_accuracy)} here, 50% balanced)',
        ]
        if self.uncorrected is not None:
            before = self.uncorrected
            lines.append(
                f"corrected scores minus the manifest's length trend; before: accuracy {pct(before['accuracy'])}"
                f", chosen longer {pct(before['chosen_longer'].accuracy)}"
                f" | shorter {pct(before['chosen_shorter'].accuracy)}, Pearson {corr(before['length_pearson'])}"
                f", length-balanced {pct(before['length_balanced_accuracy'])}"
            )
        if self.length_head_pearson is not None:
            lines.append(f"length head Pearson(length_score, answer tokens) {corr(self.length_head_pearson)}")
        if self.uncertainty_auroc is not None or self.margin_auroc is not None:
            lines.append(
                f"uncertainty AUROC for the wrong pairs {auc(self.uncertainty_auroc)}"
                f" (small |margin| alone: {auc(self.margin_auroc)}; 0.5 = no information)"
            )
        lines.append(f"time      {self.seconds:.1f}s ({self.pairs / max(self.seconds, 1e-9):.1f} pairs/s)")
        return "\n".join(lines)


def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Fraction of pairs with r_chosen > r_rejected, strictly: ties are wrong."""
    if len(chosen) == 0:
        raise ValueError("pairwise accuracy of zero pairs is undefined")
    return float(np.mean(chosen > rejected))


# the length-bias metrics of `evaluate_scores`: what every before/after report of a length fix compares
LENGTH_METRICS = (
    "chosen_longer",
    "chosen_shorter",
    "length_balanced_accuracy",
    "length_pearson",
    "length_pearson_in_pairs",
)


def length_balanced_accuracy(longer: SubsetAccuracy, shorter: SubsetAccuracy) -> float | None:
    """The accuracy on a test set where answer length tells nothing: the mean of the accuracies on
    chosen-longer and chosen-shorter pairs (None when either group is empty).

    Why beside the plain accuracy: a test set where the chosen answer is more often the shorter one
    rewards a model for preferring short answers, whatever it learned about quality; the same model
    loses that bonus, or pays it back, on data skewed the other way (a policy's own samples). On the
    balanced mean any pure length rule scores 50%, so what stays above 50% is preference the model
    learned beyond length."""
    if longer.accuracy is None or shorter.accuracy is None:
        return None
    return (longer.accuracy + shorter.accuracy) / 2


def evaluate_scores(
    pairs: Sequence[PreferencePair],
    chosen_scores: np.ndarray,
    rejected_scores: np.ndarray,
    truncated: Sequence[bool],
    answer_tokens: tuple[np.ndarray, np.ndarray] | None = None,
    uncertainty: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The metrics of EvalReport from scores already computed (shared by eval and the export gate).

    ``answer_tokens`` and ``uncertainty`` are (chosen [n], rejected [n]) like the scores; without
    them length_pearson, resp. the two AUROCs, are None."""
    correct = chosen_scores > rejected_scores
    longer = np.array([len(p.chosen) > len(p.rejected) for p in pairs])
    shorter = np.array([len(p.chosen) < len(p.rejected) for p in pairs])

    def subset(mask: np.ndarray) -> SubsetAccuracy:
        n = int(mask.sum())
        return SubsetAccuracy(n, float(correct[mask].mean()) if n else None)

    n_truncated = int(sum(truncated))
    chosen_longer, chosen_shorter = subset(longer), subset(shorter)
    return {
        "pairs": len(pairs),
        "accuracy": pairwise_accuracy(chosen_scores, rejected_scores),
        "mean_margin": float(np.mean(chosen_scores - rejected_scores)),
        "truncated": n_truncated,
        "truncation_rate": n_truncated / len(pairs),
        "chosen_longer": chosen_longer,
        "chosen_shorter": chosen_shorter,
        "length_balanced_accuracy": length_balanced_accuracy(chosen_longer, chosen_shorter),
        "shorter_wins_accuracy": float(shorter.mean()),
        "length_pearson": None
        if answer_tokens is None
        else pearson(np.concatenate([chosen_scores, rejected_scores]), np.concatenate(answer_tokens)),
        "length_pearson_in_pairs": None
        if answer_tokens is None
        else pearson(chosen_scores - rejected_scores, answer_tokens[0] - answer_tokens[1]),
        "uncertainty_auroc": None if uncertainty is None else auroc(pair_uncertainty(*uncertainty), ~correct),
        "margin_auroc": None
        if uncertainty is None
        else auroc(-np.abs(chosen_scores - rejected_scores), ~correct),
        "correct": [bool(c) for c in correct],
    }


def evaluate_bundle(
    bundle_dir: str | Path,
    data: str | Path | LoadReport | None = None,
    precision: Precision | None = None,
    batch_size: int = 32,
    threads: int = 2,
    limit: int = 0,
) -> EvalReport:
    """Verify and load the bundle, score every pair of ``data`` (None = embedded pairs), report.

    ``data`` may also be pairs already loaded (e.g. a run's validation split, `validation_split`).
    ``precision`` None uses the bundle's default (int8 when it shipped). ``limit`` > 0 evaluates only
    the first ``limit`` pairs.
    """
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    chosen_precision = precision or bundle.default_precision()
    model_path = bundle.model_path(chosen_precision)  # BundleError names what is missing
    report = data if isinstance(data, LoadReport) else load_pairs(data)
    pairs = report.pairs[:limit] if limit > 0 else report.pairs
    encoder = bundle.encoder()
    chosen, rejected = encode_pairs(encoder, pairs)
    session = make_session(model_path, threads)
    encoded = [*chosen, *rejected]
    outputs = score_outputs(session, bundle.manifest.input_names, encoded, encoder.pad_token_id, batch_size)
    tokens = answer_token_counts(encoded)
    n = len(pairs)
    served = outputs["score"]
    extra: dict[str, Any] = {}  # the EvalReport fields only some graphs and manifests have
    if bundle.manifest.length_correction is not None:  # what the service serves
        fit = LengthCorrection.from_dict(bundle.manifest.length_correction.model_dump())
        served = fit.apply(outputs["score"], tokens)
        extra["uncorrected"] = _length_metrics(pairs, outputs["score"], tokens)
    if LENGTH_OUTPUT in outputs:
        extra["length_head_pearson"] = pearson(outputs[LENGTH_OUTPUT], tokens)
    spread = outputs.get(UNCERTAINTY_OUTPUT)
    truncated = [c.truncated or r.truncated for c, r in zip(chosen, rejected, strict=True)]
    metrics = evaluate_scores(
        pairs,
        served[:n],
        served[n:],
        truncated,
        (tokens[:n], tokens[n:]),
        None if spread is None else (spread[:n], spread[n:]),
    )
    return EvalReport(
        bundle=str(bundle.path),
        input_format=bundle.manifest.input_format,
        data=report.source,
        precision=chosen_precision,
        skipped=report.skipped,
        skipped_reasons=report.skipped_reasons,
        seconds=time.perf_counter() - started,
        **metrics,
        **extra,
    )


def _length_metrics(
    pairs: Sequence[PreferencePair], scores: np.ndarray, tokens: np.ndarray
) -> dict[str, Any]:
    """Accuracy, the length split and Pearson(score, tokens) of scores [2n] (chosen sides first)."""
    n = len(pairs)
    metrics = evaluate_scores(pairs, scores[:n], scores[n:], [False] * n, (tokens[:n], tokens[n:]))
    return {k: metrics[k] for k in ("accuracy", *LENGTH_METRICS)}


def validation_split(run_dir: str | Path) -> LoadReport:
    """The held-out pairs of a `rlhf train-rm` run, re-created from its saved config: the honest data
    for a bundle exported from that run (the embedded set includes its training pairs)."""
    from training.reward.data import load_run_split

    _, val = load_run_split(run_dir)
    return LoadReport(val, source=f"{run_dir} (validation split, {len(val)} pairs)")


@dataclass(frozen=True)
class PairedComparison:
    """``other`` against ``reference`` on the same pairs: which one ranks more of them right."""

    reference: str
    other: str
    pairs: int
    gain_points: float  # accuracy(other) - accuracy(reference), in points
    se_points: float  # its paired standard error
    only_other_right: int  # pairs the other model ranks right and the reference wrong
    only_reference_right: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        return (
            f"paired    {self.other} vs {self.reference}: {self.gain_points:+.1f} ± {self.se_points:.1f}"
            f" accuracy points (paired s.e., {self.pairs} pairs; right only in the first"
            f" {self.only_other_right}, only in the second {self.only_reference_right})"
        )


def compare_reports(reference: EvalReport, other: EvalReport) -> PairedComparison:
    """Paired accuracy difference of two evaluations of the same pairs (same data, same order)."""
    if reference.data != other.data or len(reference.correct) != len(other.correct):
        raise ValueError(
            f"a paired comparison needs the same pairs: {reference.data} ({len(reference.correct)}) vs "
            f"{other.data} ({len(other.correct)})"
        )
    gain, se = paired_gain(other.correct, reference.correct)
    pairs = list(zip(other.correct, reference.correct, strict=True))
    return PairedComparison(
        reference=reference.bundle,
        other=other.bundle,
        pairs=len(pairs),
        gain_points=gain,
        se_points=se,
        only_other_right=sum(o and not r for o, r in pairs),
        only_reference_right=sum(r and not o for o, r in pairs),
    )
