"""bench.member_spread: the ensemble metrics on hand-made scores, and the command on a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bench.member_spread import member_spread_command, spread_report


def test_spread_that_is_high_exactly_on_the_wrong_pairs_has_auroc_one() -> None:
    # 3 members, 4 pairs: pairs 0-1 right and agreed on, pairs 2-3 wrong on average and disputed
    chosen = np.array([[2.0, 2.0, -3.0, 1.0], [2.0, 2.0, 1.0, -3.0], [2.0, 2.0, 0.0, 0.0]])
    rejected = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    report = spread_report(np.concatenate([chosen, rejected], axis=1), 4, ["a", "b", "c"])
    assert report["ensemble_accuracy"] == 0.5
    assert report["member_accuracy"] == {"a": 0.75, "b": 0.75, "c": 0.5}
    assert report["spread_auroc"] == 1.0
    assert len(report["member_score_correlation"]) == 3


def test_the_command_scores_each_runs_validation_split(run_dir: Path) -> None:
    app = typer.Typer()
    app.command()(member_spread_command)
    result = CliRunner().invoke(app, [str(run_dir), str(run_dir), "--split-of", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # transformers logs to stderr
    assert report["pairs"] > 0 and len(report["members"]) == 2
    assert report["spread_auroc"] in (None, pytest.approx(0.5))  # identical members: no disagreement
    alone = CliRunner().invoke(app, [str(run_dir), "--split-of", str(run_dir)])
    assert alone.exit_code != 0 and "at least two" in alone.output
