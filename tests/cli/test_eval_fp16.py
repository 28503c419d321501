"""`rlhf eval --precision fp16` and `rlhf bench quant` on a bundle that ships an fp16 graph, and the
clear errors for one that does not (onnxruntime on CPU, the real MiniLM tokenizer, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.quant import run_bench
from cli.main import app
from service.bundle import load_bundle
from tests.bundle_factory import make_tiny_bundle

PAIRS = 24  # of the embedded hh-rlhf pairs (the default data)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp16-eval")
    return {
        "all": make_tiny_bundle(root / "all", with_fp16=True),
        "fp16": make_tiny_bundle(root / "fp16", with_int8=False, with_fp16=True),
        "int8": make_tiny_bundle(root / "int8"),
        "fp32": make_tiny_bundle(root / "fp32", with_int8=False),
    }


def eval_json(bundle: Path, precision: str) -> dict:
    args = ["eval", "--bundle", str(bundle), "--limit", str(PAIRS), "--precision", precision, "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_factory_ships_a_verified_fp16_graph(bundles: dict[str, Path]) -> None:
    assert load_bundle(bundles["all"]).manifest.precisions == ["fp32", "int8", "fp16"]
    assert load_bundle(bundles["fp16"]).manifest.precisions == ["fp32", "fp16"]


def test_eval_fp16_reports_the_fp16_graph_close_to_fp32(bundles: dict[str, Path]) -> None:
    fp16, fp32 = eval_json(bundles["all"], "fp16"), eval_json(bundles["all"], "fp32")
    assert fp16["precision"] == "fp16" and fp16["pairs"] == fp32["pairs"] == PAIRS
    assert fp16["mean_margin"] == pytest.approx(fp32["mean_margin"], abs=1e-2)  # fp16 rounds the weights
    assert abs(fp16["accuracy"] - fp32["accuracy"]) <= 2 / PAIRS  # at most the near-ties may flip


@pytest.mark.parametrize("shipped", ["int8", "fp32"])
def test_eval_fp16_without_an_fp16_graph_says_so(bundles: dict[str, Path], shipped: str) -> None:
    args = ["eval", "--bundle", str(bundles[shipped]), "--limit", "2", "--precision", "fp16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "eval failed" in result.output and "has no fp16 graph (exported without --fp16" in result.output
    assert f"available: fp32{', int8' if shipped == 'int8' else ''}" in result.output


def test_an_unknown_precision_is_a_usage_error_listing_all(bundles: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["eval", "--bundle", str(bundles["all"]), "--precision", "bf16"])
    assert result.exit_code == 2 and "must be one of fp32, int8, fp16" in result.output


@pytest.mark.parametrize(
    ("shipped", "measured"), [("all", ("fp32", "int8", "fp16")), ("fp16", ("fp32", "fp16"))]
)
def test_bench_quant_measures_every_shipped_graph(
    bundles: dict[str, Path], shipped: str, measured: tuple[str, ...]
) -> None:
    result = run_bench(bundles[shipped], None, pairs=8, batch_size=4, threads=1, repeats=1)
    assert {(r.precision, r.order) for r in result.rows} == {
        (p, o) for p in measured for o in ("sorted", "arrival")
    }
    assert (result.int8_speedup is not None) == ("int8" in measured)
    assert result.fp16_speedup is not None and result.fp16_speedup > 0 and result.sorting_speedup_fp16
    table = result.format_table()
    assert "fp16 / fp32 (sorted batches)" in table and ("int8 / fp32" in table) == ("int8" in measured)


def test_bench_quant_refuses_a_bundle_with_nothing_to_compare(bundles: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["bench", "quant", "--bundle", str(bundles["fp32"]), "--pairs", "4"])
    assert result.exit_code == 1
    assert "ships neither an int8 nor an fp16 graph to compare with fp32" in result.output
