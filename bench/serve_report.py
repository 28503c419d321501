"""What `rlhf bench serve` reports: its rows, the markdown table, the ratios its targets name, results.jsonl.

    summary = summarise_run(rows, ["fp32", "int8"], multi=True)
    text = report(rows, summary, skipped={"naive": "..."})
    write_results(Path("runs/bench-serve"), text, rows, summary, request_pairs=16, threads=2)

One run may measure several precisions of one bundle (``--precision fp32,int8``). Each row carries
the precision of the graph it ran (None for the naive server, which is PyTorch fp32 and the same
reference for every precision). With one precision the summary has the keys it always had
(``service_vs_raw``, ...); with a list, each of those keys once per precision, suffixed with it
(``service_vs_raw (int8)``), plus each other precision against fp32 on the same system
(``int8_vs_fp32_raw``, ``int8_vs_fp32_service``, and per CPU second). Rows with failed requests are
shown but never used in a ratio (their speed would be a lie): a ratio with no clean side is NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REFERENCE_PAIRS, REFERENCE_CONNECTIONS = 16, 8  # the batched load single-pair requests are compared with
REFERENCE = f"{REFERENCE_CONNECTIONS} x {REFERENCE_PAIRS} pairs"
RAW = "raw onnxruntime"


@dataclass
class Row:
    system: str
    concurrency: str
    pairs: int
    seconds: float
    pairs_per_s: float
    tokens_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    first_error: str | None = None
    pairs_per_cpu_s: float | None = None  # pairs per CPU second of the scoring process: robust to other load
    service_cpu_s: float | None = None  # CPU seconds the server process spent on the load
    load_cpu_s: float | None = None  # CPU seconds the load generator spent (same machine, same cores)
    precision: str | None = None  # the graph that ran (fp32, int8, ...); None: the naive PyTorch server


def table(rows: Sequence[Row], skipped: dict[str, str] | None = None) -> str:
    """Markdown rows, then one row per precision ``skipped`` names (not measured, and why)."""
    lines = [
        "| system | precision | clients | pairs | pairs/s | tokens/s | pairs/CPU-s | p50 ms | p99 ms | errors "
        "| server CPU-s | load CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in rows:
        lines.append(
            f"| {r.system} | {r.precision or '-'} | {r.concurrency} | {r.pairs} | {r.pairs_per_s:.1f} "
            f"| {r.tokens_per_s:.0f} | {cell(r.pairs_per_cpu_s, 1)} | {cell(r.p50_ms, 0)} "
            f"| {cell(r.p99_ms, 0)} | {r.errors} | {cell(r.service_cpu_s, 1)} | {cell(r.load_cpu_s, 1)} |"
        )
    for precision, reason in (skipped or {}).items():
        lines.append(f"| not measured: {reason} | {precision} |" + " - |" * 10)
    return "\n".join(lines)


def summarise(rows: Sequence[Row]) -> dict[str, float]:
    """The ratios the targets name, from rows of one precision (plus the naive rows) without failed
    requests (NaN where a side is missing)."""
    clean = [r for r in rows if r.errors == 0]
    raw = max((r.pairs_per_s for r in clean if r.system.startswith("raw")), default=float("nan"))
    peak = max(
        (r.pairs_per_s for r in clean if r.system == "service" and not r.concurrency.startswith("open")),
        default=float("nan"),
    )
    naive_peak = max((r.pairs_per_s for r in clean if r.system.startswith("naive")), default=float("nan"))
    half = next((r for r in rows if r.concurrency.startswith("open")), None)

    def best_cpu(match: Callable[[str], bool]) -> float:
        values = [r.pairs_per_cpu_s for r in clean if match(r.system) and r.pairs_per_cpu_s]
        return max(values, default=float("nan"))

    service = best_cpu(lambda system: system == "service")  # the httpx-loaded rows (per-sample: own ratios)
    spread = (half.p99_ms or 0) / (half.p50_ms or 1) if half is not None else float("nan")
    return {
        "service_vs_raw": peak / raw,
        "service_vs_naive": peak / naive_peak,
        "p99_over_p50_at_half_load": spread,
        "service_vs_raw_per_cpu_s": service / best_cpu(lambda system: system.startswith("raw")),
        "service_vs_naive_per_cpu_s": service / best_cpu(lambda system: system.startswith("naive")),
    }


def per_sample_ratios(rows: Sequence[Row]) -> dict[str, float]:
    """Pairs per server CPU-second of each single-pair row over the batched reference's (NaN if unclean)."""
    reference = next((r for r in rows if r.system == "service /score" and r.concurrency == REFERENCE), None)
    if reference is None:
        return {}
    base = reference.pairs_per_cpu_s if reference.errors == 0 and reference.pairs_per_cpu_s else float("nan")
    return {
        f"{r.system} {r.concurrency} / {REFERENCE}, per server CPU-s": (
            r.pairs_per_cpu_s / base if r.errors == 0 and r.pairs_per_cpu_s else float("nan")
        )
        for r in rows
        if r.concurrency.endswith(" x 1 pair")
    }


def of_precision(rows: Sequence[Row], precision: str) -> list[Row]:
    """The rows of one precision, with the naive rows (the same PyTorch reference for each)."""
    return [r for r in rows if r.precision in (precision, None)]


def best(rows: Sequence[Row], system: Callable[[Row], bool], per_cpu: bool) -> float:
    """The fastest clean row of ``system`` (closed loop only), in pairs/s or pairs per CPU-s; NaN if none."""
    values = [
        r.pairs_per_cpu_s if per_cpu else r.pairs_per_s
        for r in rows
        if r.errors == 0 and system(r) and not r.concurrency.startswith("open")
    ]
    return max((v for v in values if v), default=float("nan"))


def precision_ratios(rows: Sequence[Row], precisions: Sequence[str]) -> dict[str, float]:
    """Each measured precision other than fp32 against fp32, on raw onnxruntime and on the service
    (closed-loop peak), in pairs/s and per CPU second; empty when fp32 was not measured."""
    if "fp32" not in precisions:
        return {}
    systems: dict[str, Callable[[Row], bool]] = {
        "raw": lambda r: r.system.startswith(RAW),
        "service": lambda r: r.system == "service",
    }
    ratios = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        for name, system in systems.items():
            for per_cpu, unit in ((False, ""), (True, "_per_cpu_s")):
                fast = best(of_precision(rows, precision), system, per_cpu)
                ratios[f"{precision}_vs_fp32_{name}{unit}"] = fast / best(
                    of_precision(rows, "fp32"), system, per_cpu
                )
    return ratios


def summarise_run(rows: Sequence[Row], precisions: Sequence[str], multi: bool) -> dict[str, float]:
    """The run's summary: one precision's keys as they always were, or (``multi``: a list was asked)
    each precision's keys suffixed with it, plus the ratios between precisions."""
    if not multi:
        return {**summarise(rows), **per_sample_ratios(rows)}
    summary: dict[str, float] = {}
    for precision in precisions:
        part = of_precision(rows, precision)
        ratios = {**summarise(part), **per_sample_ratios(part)}
        summary.update({f"{key} ({precision})": value for key, value in ratios.items()})
    return {**summary, **precision_ratios(rows, precisions)}


def _ratio_lines(summary: dict[str, float], suffix: str) -> list[str]:
    """The target lines of one precision (``suffix``: "" in a one-precision run, else " (int8)" ...)."""

    def get(key: str) -> float:
        return summary.get(key + suffix, float("nan"))

    naive = not math.isnan(get("service_vs_naive"))  # --no-naive, or a chat bundle: no naive row
    per_cpu = f"service / raw {get('service_vs_raw_per_cpu_s'):.2f}x" + (
        f", service / naive {get('service_vs_naive_per_cpu_s'):.2f}x" if naive else ""
    )
    lines = [
        f"service peak / raw onnxruntime: {get('service_vs_raw'):.2f}x (target >= 0.9)",
        *([f"service peak / naive peak: {get('service_vs_naive'):.2f}x (target >= 3)"] if naive else []),
        f"p99 / p50 at half of peak load: {get('p99_over_p50_at_half_load'):.2f} (target <= 3)",
        f"per CPU second (robust to other load on a shared machine): {per_cpu}",
    ]
    return lines + [
        f"{name.removesuffix(suffix)}: {value:.2f}x (target >= 0.95 at the most connections)"
        for name, value in summary.items()
        if name.endswith("per server CPU-s" + suffix)
    ]


def report(
    rows: Sequence[Row],
    summary: dict[str, float],
    precisions: Sequence[str] = (),
    skipped: dict[str, str] | None = None,
) -> str:
    """The markdown table of every row, then each ratio next to its target: once for a one-precision
    run (``precisions`` empty), else per precision, then precision against fp32, then what was skipped."""
    skipped = skipped or {}
    not_measured = {k: v for k, v in skipped.items() if k in ("fp32", "int8", "fp16")}
    lines: list[str] = []
    if not precisions:
        lines += _ratio_lines(summary, "")
    for precision in precisions:
        lines += [f"[{precision}] {line}" for line in _ratio_lines(summary, f" ({precision})")]
    for precision in precisions:
        if precision == "fp32" or f"{precision}_vs_fp32_raw" not in summary:
            continue
        lines.append(
            f"{precision} / fp32 pairs/s: raw onnxruntime {summary[f'{precision}_vs_fp32_raw']:.2f}x "
            f"({summary[f'{precision}_vs_fp32_raw_per_cpu_s']:.2f}x per CPU-s), service peak "
            f"{summary[f'{precision}_vs_fp32_service']:.2f}x "
            f"({summary[f'{precision}_vs_fp32_service_per_cpu_s']:.2f}x per CPU-s)"
        )
    lines += [f"{what} not measured: {why}" for what, why in skipped.items()]
    return table(rows, not_measured) + "\n\n" + "\n".join(lines)


def write_results(
    out: Path,
    text: str,
    rows: Sequence[Row],
    summary: dict[str, float],
    request_pairs: int,
    threads: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """OUT/table.md (what was printed) and OUT/results.jsonl (one line per row, then the summary line,
    which also holds ``extra``: the precisions measured, what was skipped and why, the input format)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    with (out / "results.jsonl").open("w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps(asdict(r)) + "\n")
        last = {"summary": summary, "request_pairs": request_pairs, "threads": threads, **(extra or {})}
        handle.write(json.dumps(last) + "\n")
