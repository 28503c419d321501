"""`rlhf bench quant`: int8 (and fp16) vs fp32, and length-sorted vs arrival-order batches, in one run.

    rlhf bench quant --bundle bundles/rm-default            # 256 hh-rlhf pairs, batches of 32, 2 threads

Why one run: on a shared CPU absolute throughput drifts by tens of percent from minute to minute, so
only ratios measured side by side mean anything. Every configuration is timed ``repeats`` times,
interleaved (fp32, int8, fp32, int8, ...), and the fastest pass of each counts. The pairs are spread
over the data so the length mix is the real one (hh-rlhf: 20 to 1,000+ tokens before truncation).
Every graph the bundle ships is measured: fp32 always, int8 and fp16 when present (at least one of them).
fp16 is measured on the CPU like the others, where onnxruntime runs most of it through casts: its row
says what CPU serving of that graph costs, not what a GPU gains.
torch-free: it measures the graphs exactly as the service runs them (`service.onnx_scoring`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import BundleError, Precision, load_bundle
from service.encoding import EncodedPair, pad_batch
from service.onnx_scoring import length_sorted_batches, make_session, run_scores
from training.reward.batching import encode_pairs
from training.reward.data import load_pairs

COMPARED: tuple[Precision, ...] = ("int8", "fp16")  # measured against fp32 when the bundle ships them


@dataclass(frozen=True)
class BenchRow:
    precision: str
    order: str  # "sorted" (length-sorted batches) or "arrival" (batches in data order)
    seconds: float  # fastest pass
    pairs_per_s: float


@dataclass
class BenchResult:
    bundle: str
    pairs: int
    batch_size: int
    threads: int
    tokens: int  # real (unpadded) tokens per pass
    rows: list[BenchRow]
    # precision / fp32 pairs/s, length-sorted batches; None when the bundle does not ship that graph
    int8_speedup: float | None
    sorting_speedup_fp32: float  # sorted / arrival-order pairs/s
    sorting_speedup_int8: float | None
    fp16_speedup: float | None = None
    sorting_speedup_fp16: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        lines = [
            f"bundle {self.bundle}: {self.pairs} pairs ({2 * self.pairs} sequences, {self.tokens} tokens), "
            f"batches of {self.batch_size}, {self.threads} threads",
            f"{'precision':<10}{'batches':<10}{'seconds':>9}{'pairs/s':>10}",
        ]
        lines += [f"{r.precision:<10}{r.order:<10}{r.seconds:>9.2f}{r.pairs_per_s:>10.1f}" for r in self.rows]
        sorting = [f"fp32 {self.sorting_speedup_fp32:.2f}x"]
        for precision, speedup, by_order in (
            ("int8", self.int8_speedup, self.sorting_speedup_int8),
            ("fp16", self.fp16_speedup, self.sorting_speedup_fp16),
        ):
            if speedup is not None and by_order is not None:
                lines.append(f"{precision} / fp32 (sorted batches): {speedup:.2f}x")
                sorting.append(f"{precision} {by_order:.2f}x")
        lines.append(f"sorted / arrival order: {', '.join(sorting)}")
        return "\n".join(lines)


def arrival_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def run_bench(
    bundle_dir: str | Path,
    data: str | Path | None = None,
    pairs: int = 256,
    batch_size: int = 32,
    threads: int = 2,
    repeats: int = 2,
) -> BenchResult:
    bundle = load_bundle(bundle_dir)
    precisions: list[Precision] = [p for p in ("fp32", *COMPARED) if p in bundle.manifest.precisions]
    if len(precisions) < 2:
        raise BundleError(
            f"{bundle.path} ships neither an int8 nor an fp16 graph to compare with fp32 "
            f"(int8: {bundle.manifest.int8.reason}; fp16: rlhf export --fp16)"
        )
    all_pairs = load_pairs(data).pairs
    picked = [
        all_pairs[int(i)] for i in np.linspace(0, len(all_pairs) - 1, min(pairs, len(all_pairs))).round()
    ]
    encoder = bundle.encoder()
    chosen, rejected = encode_pairs(encoder, picked)
    # arrival order: each pair's two answers next to each other, as a trainer would send them
    encoded = [e for pair in zip(chosen, rejected, strict=True) for e in pair]
    names = bundle.manifest.input_names
    plans = {
        "sorted": length_sorted_batches([len(e) for e in encoded], batch_size),
        "arrival": arrival_batches(len(encoded), batch_size),
    }
    sessions = {p: make_session(bundle.model_path(p), threads) for p in precisions}
    best: dict[tuple[str, str], float] = {}
    for p in precisions:  # warm-up: first runs allocate arenas
        run_scores(sessions[p], names, pad_batch(encoded[:batch_size], encoder.pad_token_id))
    for _ in range(max(1, repeats)):
        for order, batches in plans.items():
            for p in precisions:
                seconds = _timed_pass(sessions[p], names, encoded, batches, encoder.pad_token_id)
                best[(p, order)] = min(best.get((p, order), float("inf")), seconds)
    n = len(picked)
    rows = [BenchRow(p, o, s, n / s) for (p, o), s in best.items()]

    def speedup(p: str) -> float | None:
        return best[("fp32", "sorted")] / best[(p, "sorted")] if p in precisions else None

    def sorting(p: str) -> float | None:
        return best[(p, "arrival")] / best[(p, "sorted")] if p in precisions else None

    return BenchResult(
        bundle=str(bundle.path),
        pairs=n,
        batch_size=batch_size,
        threads=threads,
        tokens=sum(len(e) for e in encoded),
        rows=rows,
        int8_speedup=speedup("int8"),
        sorting_speedup_fp32=best[("fp32", "arrival")] / best[("fp32", "sorted")],
        sorting_speedup_int8=sorting("int8"),
        fp16_speedup=speedup("fp16"),
        sorting_speedup_fp16=sorting("fp16"),
    )


def _timed_pass(
    session: Any, names: list[str], encoded: list[EncodedPair], batches: list[list[int]], pad_token_id: int
) -> float:
    padded = [pad_batch([encoded[i] for i in idx], pad_token_id) for idx in batches]  # not timed
    started = time.perf_counter()
    for batch in padded:
        run_scores(session, names, batch)
    return time.perf_counter() - started
