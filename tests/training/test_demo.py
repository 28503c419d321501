"""The demo's own plumbing: the commands it shows, the validation file it writes, the service it runs."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.bundle_factory import make_tiny_bundle
from training.demo import DemoError, free_port, rlhf, running_service, shown, write_val_pairs
from training.reward.config import RewardConfig
from training.reward.data import load_run_split


def test_commands_are_shown_as_a_user_types_them() -> None:
    assert rlhf("eval", "--json")[:3] == [sys.executable, "-m", "training.cli"]
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
