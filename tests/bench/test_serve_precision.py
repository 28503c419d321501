"""`rlhf bench serve --precision`: one precision keeps the summary it always had; a list is resolved against
the bundle (auto, duplicates, a graph it lacks) and summarised per precision and between precisions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import typer

from bench.serve import choose_precisions
from bench.serve_report import Row, report, summarise_run, table
from service.bundle import load_bundle
from tests.bundle_factory import make_tiny_bundle

SINGLE_KEYS = {  # what README and earlier results.jsonl files read
    "service_vs_raw",
    "service_vs_naive",
    "p99_over_p50_at_half_load",
    "service_vs_raw_per_cpu_s",
    "service_vs_naive_per_cpu_s",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("precision") / "rm")  # fp32 and int8, no fp16


def test_precisions_are_resolved_against_the_bundle(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    auto = choose_precisions(loaded, "auto")
    assert (auto.measured, auto.skipped, auto.multi) == (["int8"], {}, False)
    both = choose_precisions(loaded, " fp32 , auto ")
    assert (both.measured, both.multi) == (["fp32", "int8"], True)
    assert choose_precisions(loaded, "int8,int8,auto").measured == ["int8"]
    with_fp16 = choose_precisions(loaded, "fp32,fp16")
    assert with_fp16.measured == ["fp32"] and with_fp16.multi
    assert "no fp16 graph" in with_fp16.skipped["fp16"]
    for bad in ("", "fp33", "fp32,,int4"):
        with pytest.raises(typer.BadParameter, match="one or more of auto, fp32, int8, fp16"):
            choose_precisions(loaded, bad)
    with pytest.raises(typer.BadParameter, match="no fp16 graph"):
        choose_precisions(loaded, "fp16")


def rows_of(precision: str | None, raw: float, service: float, errors: int = 0) -> list[Row]:
    """A raw row and a closed-loop service row at the given pairs/s (pairs per CPU-s half of it), and
    an open-loop row."""
    return [
        Row(f"raw onnxruntime ({precision}, sorted x32)", "-", 10, 1.0, raw, 100.0,
            pairs_per_cpu_s=raw / 2, precision=precision),
        Row("service", "4", 10, 1.0, service, 100.0, 10.0, 20.0, errors=errors, pairs_per_cpu_s=service / 2,
            precision=precision),
        Row("service", "open loop 5 pairs/s", 10, 1.0, 5.0, 100.0, 10.0, 30.0, precision=precision),
    ]  # fmt: skip


def test_one_precision_keeps_its_keys_and_a_list_summarises_each_and_between() -> None:
    naive = Row("naive FastAPI+transformers", "4", 10, 1.0, 2.0, 100.0, 50.0, 60.0, pairs_per_cpu_s=1.0)
    fp32, int8 = rows_of("fp32", 10.0, 9.0), rows_of("int8", 20.0, 19.0)
    single = summarise_run([*int8, naive], ["int8"], multi=False)
    assert set(single) == SINGLE_KEYS and single["service_vs_raw"] == pytest.approx(19 / 20)

    summary = summarise_run([*fp32, *int8, naive], ["fp32", "int8"], multi=True)
    assert summary["service_vs_raw (fp32)"] == pytest.approx(0.9)
    assert summary["service_vs_raw (int8)"] == pytest.approx(0.95)
    assert summary["service_vs_naive (int8)"] == pytest.approx(19 / 2)  # the naive rows serve every precision
    assert summary["p99_over_p50_at_half_load (fp32)"] == pytest.approx(3.0)
    assert summary["int8_vs_fp32_raw"] == pytest.approx(2.0)
    assert summary["int8_vs_fp32_service"] == pytest.approx(19 / 9)
    assert summary["int8_vs_fp32_service_per_cpu_s"] == pytest.approx(19 / 9)
    assert not SINGLE_KEYS & set(summary)

    text = report([*fp32, *int8], summary, ["fp32", "int8"], {"naive": "not today"})
    assert "[fp32] service peak / raw onnxruntime: 0.90x (target >= 0.9)" in text
    assert "[int8] service peak / raw onnxruntime: 0.95x" in text
    assert "int8 / fp32 pairs/s: raw onnxruntime 2.00x (2.00x per CPU-s), service peak 2.11x" in text
    assert "naive not measured: not today" in text
    assert "[int8] service peak / naive peak: 9.50x" in text  # a naive row: its ratio is shown

    without_naive = summarise_run([*fp32, *int8], ["fp32", "int8"], multi=True)
    text = report([*fp32, *int8], without_naive, ["fp32", "int8"])
    assert "naive" not in text and "nan" not in text  # no naive row: no line about it


def test_a_failed_row_is_never_a_side_of_a_ratio() -> None:
    rows = [*rows_of("fp32", 10.0, 9.0), *rows_of("int8", 20.0, 19.0, errors=1)]
    summary = summarise_run(rows, ["fp32", "int8"], multi=True)
    assert math.isnan(summary["service_vs_raw (int8)"]) and math.isnan(summary["int8_vs_fp32_service"])
    assert summary["int8_vs_fp32_raw"] == pytest.approx(2.0)


def test_the_table_names_each_rows_precision_and_what_was_not_measured() -> None:
    text = table(rows_of("fp32", 10.0, 9.0), {"int8": "bundle b has no int8 graph (gate failed)"})
    lines = text.splitlines()
    assert lines[0].startswith("| system | precision | clients |")
    assert lines[2].startswith("| raw onnxruntime (fp32, sorted x32) | fp32 | - | 10 | 10.0 |")
    assert lines[-1].startswith("| not measured: bundle b has no int8 graph (gate failed) | int8 | - |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # a well-formed markdown table
