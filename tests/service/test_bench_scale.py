"""`rlhf bench scale`: its data loading, its summary arithmetic, and one real run on two replicas."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale import BenchError, Round, load_pairs, run_scale, summarise
from tests.bundle_factory import make_tiny_bundle
from training.data import embedded_pairs_path


def write_records(path: Path, records: list[dict[str, str]], compress: bool) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_load_pairs_splits_at_the_last_assistant_turn(tmp_path: Path, compress: bool) -> None:
    record = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away",
    }
    path = write_records(tmp_path / "d.jsonl", [record], compress)
    pairs = load_pairs(path, 2)
    question = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:"
    assert pairs == [(question, " see you"), (question, " go away")]
    with pytest.raises(BenchError, match="fewer than --pairs 3"):
        load_pairs(path, 3)


def test_load_pairs_names_the_bad_line(tmp_path: Path) -> None:
    path = write_records(tmp_path / "d.jsonl", [{"chosen": "a\n\nAssistant: b", "rejected": "x"}], False)
    with path.open("a") as handle:
        handle.write('{"question": "q"}\n')
    with pytest.raises(BenchError, match=r"d.jsonl:2: not an hh-rlhf record"):
        load_pairs(path, 10)


def test_embedded_sample_loads_and_the_bench_stays_torch_free() -> None:
    assert len(load_pairs(embedded_pairs_path(), 100)) == 100
    code = "import sys, bench.scale; assert 'torch' not in sys.modules, 'bench.scale imported torch'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_summary_takes_medians_and_ratios() -> None:
    def rnd(replicas: int, rate: float) -> Round:
        return Round(replicas, 0, 100, 1.0, rate, 0, 0.9 * replicas, 0.2, 2.0, "1")

    summary = summarise(
        [rnd(1, 100.0), rnd(2, 150.0), rnd(1, 110.0), rnd(2, 170.0), rnd(1, 90.0), rnd(2, 160.0)]
    )
    assert summary.pairs_per_s == {1: 100.0, 2: 160.0}
    assert summary.speedup_vs_1 == {1: 1.0, 2: 1.6}
    assert summary.replica_cpu_cores == {1: 0.9, 2: 1.8}
    assert summary.pairs_per_replica_cpu_s == {1: 111.1, 2: 88.9}  # median of 100/0.9, 150/1.8 ...
    assert "1.60x" in summary.table()


@pytest.mark.slow
def test_two_real_replicas_score_every_pair(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    pairs = load_pairs(embedded_pairs_path(), 96)
    results = run_scale(bundle, pairs, 2, 1, 1, "auto", 16, 4, 60.0, tmp_path)
    assert [r.replicas for r in results] == [1, 2]
    for r in results:
        assert r.failed == 0 and r.pairs == 96 and r.pairs_per_s > 0
        assert r.model_version == "1"
        assert r.replica_cpu_cores > 0
    logs = sorted(tmp_path.glob("replica-*.log"))
    assert len(logs) == 2  # both replicas ran (and were stopped: run_scale returned)
