"""Post-hoc length correction: the least-squares fit, the answer-token unit, and a fit on a real bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.bundle import LengthCorrectionInfo, load_bundle
from service.encoding import PairEncoder, TruncationPolicy
from service.onnx_scoring import make_session, score_encoded
from tests.bundle_factory import make_tiny_bundle, minilm_tokenizer_json
from training.reward.data import PreferencePair
from training.reward.length_correction import (
    LengthCorrection,
    answer_token_counts,
    fit_bundle_length_correction,
    fit_length_correction,
    score_bundle_pairs,
)


def test_fit_recovers_an_exact_line_and_removes_it() -> None:
    lengths = np.array([10, 20, 30, 40])
    scores = 2.0 - 0.05 * lengths  # shorter is "better"
    fit = fit_length_correction(scores, lengths)
    assert (fit.slope, fit.intercept) == (pytest.approx(-0.05), pytest.approx(2.0))
    assert (fit.mean_length, fit.fitted_on, fit.pearson) == (25.0, 4, pytest.approx(-1.0))
    corrected = fit.apply(scores, lengths)
    assert np.allclose(corrected, scores.mean())  # only the length trend was there: a constant is left
    # an unseen length is corrected by the same line: 2 - 0.05 * 100 + 0.05 * (100 - 25)
    assert fit.apply(np.array([-3.0]), np.array([100]))[0] == pytest.approx(2.0 - 0.05 * 25)


def test_fit_matches_numpy_and_leaves_no_correlation_on_the_fit_items() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 500)
    scores = 0.3 - 0.01 * lengths + rng.normal(0, 1.0, 500)
    fit = fit_length_correction(scores, lengths)
    slope, intercept = np.polyfit(lengths, scores, 1)
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    assert fit.pearson == pytest.approx(np.corrcoef(scores, lengths)[0, 1])
    corrected = fit.apply(scores, lengths)
    assert abs(np.corrcoef(corrected, lengths)[0, 1]) < 1e-9
    assert corrected.mean() == pytest.approx(scores.mean())
    with pytest.raises(ValueError, match="two distinct"):
        fit_length_correction(np.array([1.0, 2.0]), np.array([5, 5]))


def test_manifest_entry_round_trips() -> None:
    fit = LengthCorrection(slope=-0.02, intercept=0.4, mean_length=37.5, fitted_on=256, pearson=-0.6)
    entry = fit.to_dict()
    assert entry == {
        "kind": "linear",
        "slope": -0.02,
        "intercept": 0.4,
        "unit": "answer_tokens",
        "mean_length": 37.5,
        "fitted_on": 256,
        "pearson": -0.6,
    }
    assert LengthCorrection.from_dict(entry) == fit
    assert LengthCorrectionInfo(**entry).model_dump() == entry  # what the service reads
    with pytest.raises(ValueError, match="unknown length correction"):
        LengthCorrection.from_dict({**entry, "unit": "characters"})


def test_answer_tokens_are_read_from_the_encoded_pairs() -> None:
    encoder = PairEncoder.from_file(
        minilm_tokenizer_json(), TruncationPolicy(max_length=32, min_question_tokens=8)
    )
    answers = ["Yes.", "I am not sure what you mean by that.", "word " * 60]
    encoded = encoder.encode(["What?"] * 3, answers)
    alone = [len(encoder.tokenizer.encode(a, add_special_tokens=False).ids) for a in answers]
    counts = answer_token_counts(encoded)
    assert counts.dtype == np.int64 and counts[:2].tolist() == alone[:2]
    assert encoded[2].truncated and counts[2] < alone[2]  # truncated: what the model saw


def test_fit_on_any_bundle_scores_both_answers_with_its_graph(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "imported", with_int8=False)
    pairs = [PreferencePair(f"Question {i}?", "yes " * (i % 9 + 1), "no " * (i % 4 + 1)) for i in range(40)]
    fit = fit_bundle_length_correction(bundle_dir, pairs)
    bundle = load_bundle(bundle_dir)
    enc = bundle.encoder()
    encoded = enc.encode(
        [p.question for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
    )
    scores = score_encoded(
        make_session(bundle.model_path("fp32")), bundle.manifest.input_names, encoded, enc.pad_token_id
    )
    expected = fit_length_correction(scores, answer_token_counts(encoded))
    assert fit == expected and fit.fitted_on == 80


def test_a_non_finite_score_is_refused_rather_than_fitted() -> None:
    with pytest.raises(ValueError, match="1 of 3 scores are not finite"):
        fit_length_correction(np.array([0.1, np.nan, 0.3]), np.array([1, 2, 3]))


def test_bundle_pair_scores_are_chosen_first_with_lengths_and_truncation(tmp_path: Path) -> None:
    bundle = load_bundle(make_tiny_bundle(tmp_path / "rm", with_int8=False))
    pairs = [PreferencePair("Why?", "Because.", "word " * 300), PreferencePair("How?", "Slowly.", "Fast.")]
    scored = score_bundle_pairs(bundle, pairs)
    enc = bundle.encoder()
    encoded = enc.encode(["Why?", "How?", "Why?", "How?"], ["Because.", "Slowly.", "word " * 300, "Fast."])
    assert scored.pairs == 2 and scored.truncated.tolist() == [False, False, True, False]
    assert scored.tokens.tolist() == [e.answer_tokens for e in encoded]
    session = make_session(bundle.model_path("fp32"))
    assert np.array_equal(scored.scores, score_encoded(session, bundle.manifest.input_names, encoded, 0))
