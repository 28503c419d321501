"""Post-hoc length correction of any reward model's scores (Huang et al. 2025): fit the trend, subtract it.

    lengths = answer_token_counts(encoded)                   # [n] answer tokens of each encoded pair
    fit = fit_length_correction(scores, lengths)             # least squares: score ~ a + b * tokens
    corrected = fit.apply(scores, lengths)                   # score - b * (tokens - mean tokens)
    manifest["length_correction"] = fit.to_dict()

    fit = fit_bundle_length_correction("bundles/imported", pairs)  # for any bundle, torch-free
    scored = score_bundle_pairs(load_bundle("bundles/imported"), pairs)  # raw scores + lengths [2n]

Why: a reward model trained on limited preference data learns "shorter (or longer) is better" far
beyond what the data holds, and a policy finds that direction first. Subtracting the linear trend of
score on answer length, fitted on calibration items, removes the part of the score that length alone
predicts; the centring at the fitted mean length keeps the corrected scores on the same mean, so the
bundle's score statistics still describe them. It needs no retraining, so it works for every bundle,
imported ones included; the length-disentangled head (losses.py) is the trained alternative.

Unit ``answer_tokens``: the tokens of the answer as the model saw it (after truncation, without the
template's special tokens), as `service.encoding.EncodedPair.answer_tokens` counts them: training,
export, evaluation and the service read one number. The manifest entry is the service's
``LengthCorrectionInfo``. `rlhf correct-length` (correct_length.py) fits and writes it for an existing
bundle. torch-free (numpy, tokenizers, onnxruntime).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle, Precision, load_bundle
from service.encoding import EncodedPair
from service.onnx_scoring import make_session, score_encoded
from training.reward.batching import encode_pairs

UNIT = "answer_tokens"


@dataclass(frozen=True)
class LengthCorrection:
    """score ~ intercept + slope * answer_tokens, fitted on ``fitted_on`` items.

    ``mean_length`` is the fit items' mean answer length: the corrected score is
    ``score - slope * (tokens - mean_length)``, so the mean score over the fit items is unchanged.
    ``pearson`` is the fitted trend's strength (score vs length on the fit items, before correction).
    """

    slope: float
    intercept: float
    mean_length: float
    fitted_on: int
    pearson: float | None  # None only in an entry written without it (the service's schema allows it)

    def apply(self, scores: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Corrected scores [n] for raw scores [n] and answer token counts [n]."""
        return np.asarray(scores, dtype=np.float64) - self.slope * (
            np.asarray(lengths, dtype=np.float64) - self.mean_length
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``length_correction`` entry."""
        return {
            "kind": "linear",
            "slope": self.slope,
            "intercept": self.intercept,
            "unit": UNIT,
            "mean_length": self.mean_length,
            "fitted_on": self.fitted_on,
            "pearson": self.pearson,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LengthCorrection:
        if values.get("kind") != "linear" or values.get("unit") != UNIT:
            raise ValueError(f"unknown length correction {dict(values)!r}: expected kind linear, unit {UNIT}")
        return cls(
            float(values["slope"]),
            float(values["intercept"]),
            float(values["mean_length"]),
            int(values["fitted_on"]),
            None if values.get("pearson") is None else float(values["pearson"]),
        )


def fit_length_correction(scores: np.ndarray, lengths: np.ndarray) -> LengthCorrection:
    """Ordinary least squares of scores [n] on answer lengths [n]; needs two distinct lengths."""
    y = np.asarray(scores, dtype=np.float64)
    x = np.asarray(lengths, dtype=np.float64)
    assert x.shape == y.shape and x.ndim == 1, f"expected two [n] arrays, got {x.shape} and {y.shape}"
    bad = int((~np.isfinite(y)).sum())
    if bad:  # one NaN would make the slope NaN, and the service would subtract it from every score
        raise ValueError(f"{bad} of {y.size} scores are not finite: no length trend can be fitted to them")
    x_mean, y_mean = float(x.mean()) if x.size else 0.0, float(y.mean()) if y.size else 0.0
    sxx = float(((x - x_mean) ** 2).sum())
    if x.size < 2 or sxx == 0.0:
        raise ValueError(f"a length trend needs at least two distinct answer lengths (got {x.size} items)")
    sxy = float(((x - x_mean) * (y - y_mean)).sum())
    syy = float(((y - y_mean) ** 2).sum())
    slope = sxy / sxx
    pearson = sxy / np.sqrt(sxx * syy) if syy > 0 else 0.0
    return LengthCorrection(slope, y_mean - slope * x_mean, x_mean, int(x.size), float(pearson))


def answer_token_counts(encoded: Sequence[EncodedPair]) -> np.ndarray:
    """Answer tokens [n] int64 of each encoded pair (after truncation, specials excluded)."""
    return np.array([pair.answer_tokens for pair in encoded], dtype=np.int64)


@dataclass(frozen=True)
class PairScores:
    """Both answers of n pairs scored by a bundle's graph, chosen answers first: [2n] each."""

    scores: np.ndarray  # float64 [2n]: the graph's "score" output, no length correction applied
    tokens: np.ndarray  # int64 [2n]: answer tokens (the correction's unit)
    truncated: np.ndarray  # bool [2n]: whether the encoder cut the item

    @property
    def pairs(self) -> int:
        return len(self.scores) // 2


def score_bundle_pairs(
    bundle: Bundle,
    pairs: Sequence[Any],
    precision: Precision = "fp32",
    batch_size: int = 32,
    threads: int = 2,
) -> PairScores:
    """Score both answers of ``pairs`` (`PreferencePair`s, text or conversational) with the bundle's own
    encoder (pair or chat) and an onnxruntime session on its ``precision`` graph: what the service
    computes before it applies a length correction."""
    encoder = bundle.encoder()
    chosen, rejected = encode_pairs(encoder, pairs)
    encoded = [*chosen, *rejected]
    session = make_session(bundle.model_path(precision), threads)
    scores = score_encoded(session, bundle.manifest.input_names, encoded, encoder.pad_token_id, batch_size)
    truncated = np.array([e.truncated for e in encoded], dtype=bool)
    return PairScores(scores, answer_token_counts(encoded), truncated)


def fit_bundle_length_correction(
    bundle_dir: str | Path,
    pairs: Sequence[Any],
    precision: Precision = "fp32",
    batch_size: int = 32,
    threads: int = 2,
) -> LengthCorrection:
    """Fit the correction of an existing bundle (trained here or imported) on both answers of ``pairs``.

    ``pairs`` are `PreferencePair`s (question, chosen, rejected): calibration data, not evaluation data.
    """
    scored = score_bundle_pairs(load_bundle(bundle_dir), pairs, precision, batch_size, threads)
    return fit_length_correction(scored.scores, scored.tokens)
