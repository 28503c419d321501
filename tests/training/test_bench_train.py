from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from training.reward.diagnostics import paired_gain


@pytest.mark.slow
def test_bench_train_smoke_runs_both_sides(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("trl")
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "train",
            "--limit",
            "60",
            "--out",
            str(out),
            "--base-model",
            str(tiny_model),
            "--max-length",
            "64",
            "--min-question-tokens",
            "8",
            "--lr",
            "1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "time ours/TRL on TRL-kept pairs: wall" in result.output
    report = json.loads((out / "bench_train.json").read_text())
    assert report["train_pairs"] == 54 and report["heldout_pairs"] == 6
    # TRL drops long pairs (most of hh-rlhf at 64 tokens); it trains on exactly the ones we count as kept
    assert 0 < report["trl_kept_pairs"] < report["train_pairs"]
    assert report["trl"]["trained_pairs"] == report["trl_kept_pairs"]
    assert report["ours_all"]["steps"] == 4 and report["ours_kept"]["steps"] >= 1
    for side in ("trl", "ours_kept", "ours_all"):
        assert 0.0 <= report[side]["heldout_accuracy"] <= 1.0 and report[side]["train_time_s"] > 0
    # TRL's model is scored both as TRL leaves it (right truncation) and with our left truncation
    assert 0.0 <= report["trl"]["heldout_accuracy_left_truncated"] <= 1.0
    gain_left = 100 * (
        report["ours_all"]["heldout_accuracy"] - report["trl"]["heldout_accuracy_left_truncated"]
    )
    assert report["accuracy_gain_points_vs_trl_left_truncated"] == pytest.approx(gain_left)
    assert "TRL scored with our left truncation" in result.output
    assert report["wall_time_ratio_ours_over_trl"] > 0 and report["cpu_time_ratio_ours_over_trl"] > 0
    pad = report["padding"]
    assert pad["trl"]["padded_tokens"] >= pad["trl"]["real_tokens"] > 0


def test_paired_gain_counts_only_pairs_the_models_disagree_on() -> None:
    ours = [True, True, True, False, True, False]
    theirs = [True, False, True, False, False, False]
    gain, se = paired_gain(ours, theirs)
    # differences 0,1,0,0,1,0: mean 1/3, sample std sqrt(4/15), s.e. sqrt(4/15)/sqrt(6)
    assert gain == pytest.approx(100 / 3)
    assert se == pytest.approx(100 * (4 / 15) ** 0.5 / 6**0.5)
    assert paired_gain(theirs, theirs) == (0.0, 0.0)
