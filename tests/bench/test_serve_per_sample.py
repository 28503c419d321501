"""`rlhf bench serve`'s per-sample phase at tiny scale: every trainer route, one pair per request, against
`python -m service` in its own process on a tiny bundle, as the benchmark runs it."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import ServerProcess, free_port, running_server
from bench.serve import PER_SAMPLE_BODIES, load_hh_pairs, per_sample_phase, service_env
from bench.serve_report import REFERENCE, per_sample_ratios, report, summarise, table
from service.bundle import load_bundle
from tests.bundle_factory import make_tiny_bundle
from training.data import embedded_pairs_path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bench") / "rm")


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = service_env(bundle, "fp32", 1, port, 2048, {})
    with running_server([sys.executable, "-m", "service"], f"http://127.0.0.1:{port}", env) as started:
        yield started


def test_every_route_one_pair_per_request(server: ServerProcess, bundle: Path) -> None:
    work = load_hh_pairs(embedded_pairs_path(), 24, seed=0)
    rows = per_sample_phase(server, work, load_bundle(bundle).encoder(), [4, 16], list(PER_SAMPLE_BODIES), 48)
    assert [(r.system, r.concurrency) for r in rows] == [("service /score", REFERENCE)] + [
        (f"service /{route}", f"{level} x 1 pair") for route in PER_SAMPLE_BODIES for level in (4, 16)
    ]
    for r in rows:
        assert r.errors == 0, r.first_error
        assert r.pairs == 48 and r.pairs_per_s > 0 and r.tokens_per_s > 0
        assert r.p50_ms is not None and r.p99_ms is not None and 0 < r.p50_ms <= r.p99_ms
        assert (
            r.service_cpu_s
            and r.service_cpu_s > 0
            and r.pairs_per_cpu_s == pytest.approx(48 / r.service_cpu_s)
        )
        assert r.load_cpu_s is not None and r.load_cpu_s > 0
    ratios = per_sample_ratios(rows)
    assert len(ratios) == 2 * len(PER_SAMPLE_BODIES) and all(
        math.isfinite(v) and v > 0 for v in ratios.values()
    )
    assert "| server CPU-s | load CPU-s |" in table(rows)


def test_the_ratios_skip_rows_with_errors_and_join_the_report(server: ServerProcess, bundle: Path) -> None:
    work = load_hh_pairs(embedded_pairs_path(), 8, seed=1)
    rows = per_sample_phase(server, work, load_bundle(bundle).encoder(), [8], ["get_reward"], 16)
    rows[1].errors = 1  # a row with a failed request is shown, never used in a ratio
    (ratio,) = per_sample_ratios(rows).values()
    assert math.isnan(ratio)
    assert per_sample_ratios(rows[1:]) == {}  # no reference row: no ratio
    # the report prints the per-sample ratios beside the service summary's
    raw = rows[0].__class__(
        "raw onnxruntime (fp32, sorted x32)", "-", 16, 1.0, 16.0, 100.0, pairs_per_cpu_s=20.0
    )
    service = rows[0].__class__("service", "4", 16, 1.0, 16.0, 100.0, 10.0, 20.0, pairs_per_cpu_s=15.0)
    half = rows[0].__class__("service", "open loop 8 pairs/s", 16, 1.0, 16.0, 100.0, 10.0, 20.0)
    summary = {**summarise([raw, service, half, *rows]), **per_sample_ratios(rows)}
    assert summary["service_vs_raw_per_cpu_s"] == pytest.approx(15.0 / 20.0)  # per-sample rows not mixed in
    assert "service /get_reward 8 x 1 pair / 8 x 16 pairs, per server CPU-s: nanx" in report(rows, summary)
