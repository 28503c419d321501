"""The demo's own plumbing: the commands it shows, the validation file it writes, the service it runs."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from bench.procs import free_port
from tests.bundle_factory import make_tiny_bundle
from training.demo import (
    DemoError,
    DemoPaths,
    print_summary,
    rlhf,
    running_service,
    shown,
    write_val_pairs,
)
from training.reward.config import RewardConfig
from training.reward.data import load_run_split


def test_commands_are_shown_as_a_user_types_them() -> None:
    assert rlhf("eval", "--json")[:3] == [sys.executable, "-m", "cli.main"]
    assert shown(rlhf("export", "runs/rm", "--out", "b")) == "rlhf export runs/rm --out b"
    assert shown(["make", "test"]) == "make test"


def test_validation_pairs_file_is_the_runs_split(tmp_path: Path) -> None:
    config = RewardConfig(base_model="unused", val_fraction=0.05, seed=3)
    config.save(tmp_path / "reward_config.json")
    written = write_val_pairs(tmp_path, tmp_path / "val.jsonl.gz")
    _, val = load_run_split(tmp_path)
    with gzip.open(tmp_path / "val.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert written == len(val) == len(rows) > 0
    assert [(r["question"], r["chosen"], r["rejected"]) for r in rows] == [
        (p.question, p.chosen, p.rejected) for p in val
    ]


@pytest.mark.slow
def test_service_starts_scores_and_drains_on_exit(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    log = tmp_path / "service.log"
    with running_service(bundle, free_port(), log) as url:
        response = httpx.post(f"{url}/score", json={"pairs": [{"question": "q", "answer": "a"}]})
        assert response.status_code == 200
        assert len(response.json()["scores"]) == 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2.0)


def test_a_service_that_cannot_start_is_a_clear_demo_error(tmp_path: Path) -> None:
    with (
        pytest.raises(DemoError, match="exited with code"),
        running_service(tmp_path / "no-such-bundle", free_port(), tmp_path / "service.log"),
    ):
        pass


def _summary_inputs(tmp_path: Path) -> tuple[DemoPaths, dict, dict]:
    paths = DemoPaths(tmp_path)
    paths.bundle.mkdir(parents=True)
    manifest = {
        "name": "reward",
        "version": "1",
        "int8": {"shipped": True},
        "eval": {"accuracy_fp32": 0.635, "accuracy_int8": 0.62},
        "score": {"mean": 0.0, "std": 0.44},
    }
    (paths.bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    policy = {
        "before": {"mean_raw": -0.1, "scored": 64, "mean_length": 34.5, "eos_fraction": 0.25},
        "after": {"mean_raw": 0.16, "scored": 64, "mean_length": 16.4, "eos_fraction": 0.92},
        "gain_in_std": 0.59,
        "gain_se_in_std": 0.07,
        "greedy_gain_in_std": None,
        "kl_last": 6.7,
        "scoring_share_mean": 0.008,
    }
    return paths, {"pairs": 200, "accuracy": 0.62}, policy


def test_summary_shows_the_gain_and_only_the_evaluations_that_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, eval_report, policy = _summary_inputs(tmp_path)
    print_summary(paths, eval_report, policy)
    out = capsys.readouterr().out
    assert "+0.59 ± 0.07 (64 samples" in out and "34.5 → 16.4 tokens" in out
    assert "greedy" not in out and "nan" not in out
    print_summary(paths, eval_report, {**policy, "greedy_gain_in_std": 0.4, "greedy_gain_se_in_std": 0.1})
    assert re.search(r"gain in RM score std \(greedy\) +\+0\.40 ± 0\.10", capsys.readouterr().out)
