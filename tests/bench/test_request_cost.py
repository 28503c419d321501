"""`python -m bench.request_cost` end to end on a tiny bundle: a real service process, real sockets."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from typer.testing import CliRunner

from bench.request_cost import bench_request_cost_command


def test_request_cost_reports_each_route_against_the_16_pair_reference(bundle_v1: Path) -> None:
    app = typer.Typer()
    app.command()(bench_request_cost_command)
    args = ["--bundle", str(bundle_v1), "--pairs", "32", "--connections", "8", "--rounds", "1"]
    result = CliRunner().invoke(app, [*args, "--routes", "score,get_reward", "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1:-1] for line in result.output.splitlines() if line.startswith("| ")][1:]
    assert [r[0].split()[0] for r in rows] == ["score", "score", "get_reward"]
    for row in rows:
        assert int(row[1]) > 0 and int(row[-1]) == 0  # requests sent, no errors
        assert math.isfinite(float(row[2])) and float(row[2]) > 0  # pairs per service CPU-second
    assert float(rows[0][3]) == 1.0  # the reference against itself

    bad = CliRunner().invoke(app, [*args, "--routes", "nope"])
    assert bad.exit_code != 0 and "unknown routes" in bad.output
