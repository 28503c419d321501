"""The engine's limit for `rlhf bench serve`: raw onnxruntime on the bundle's own encodings, sorted and padded.

    rows = raw_pass(Path("bundles/rm-default"), ["fp32", "int8"], pairs, threads=2)

No HTTP, no tokenisation on the clock, globally length-sorted batches of 32 (the best possible
padding): the reference the service's throughput is a ratio of. The pairs are encoded by the bundle's
own encoder (`Bundle.encoder`: pair or chat, the manifest's truncation and pad id), the very call the
service makes for a pair, so both run the same tokens; `raw_inputs` exposes the batches so a test can
check the service scores them alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

from bench.serve_report import RAW, Row, table
from service.bundle import Precision, load_bundle
from service.encoding import pad_batch

if TYPE_CHECKING:
    from service.backend import OnnxBackend


@dataclass
class RawInputs:
    """What raw onnxruntime runs: the bundle's graph at one precision and the pairs as the service
    encodes them (the bundle's own encoder, `Bundle.encoder`), length-sorted and padded in batches of 32."""

    precision: Precision
    backend: OnnxBackend
    batches: list[dict[str, np.ndarray]]
    order: list[int]  # the index in ``pairs`` of each batch row, batches concatenated
    tokens: int  # real tokens over all pairs, after the bundle's truncation


def raw_inputs(bundle_dir: Path, precision: str, pairs: Sequence[tuple[str, str]], threads: int) -> RawInputs:
    """Open the graph of ``precision`` (auto: the bundle's default) and encode ``pairs`` for it."""
    # onnxruntime loads only when a benchmark runs, so `rlhf --help` stays fast
    from service.backend import OnnxBackend
    from service.model import choose_precision
    from service.onnx_scoring import length_sorted_batches

    bundle = load_bundle(bundle_dir)
    chosen = choose_precision(bundle, precision)  # type: ignore[arg-type]
    backend = OnnxBackend(bundle.model_path(chosen), bundle.manifest.input_names, threads)
    encoder = bundle.encoder()
    encoded = encoder.encode([q for q, _ in pairs], [a for _, a in pairs])
    groups = length_sorted_batches([len(e) for e in encoded], 32)
    batches = [pad_batch([encoded[j] for j in group], encoder.pad_token_id) for group in groups]
    order = [j for group in groups for j in group]
    return RawInputs(chosen, backend, batches, order, sum(len(e) for e in encoded))


def raw_onnxruntime(bundle_dir: Path, precision: str, pairs: Sequence[tuple[str, str]], threads: int) -> Row:
    """The engine's limit: length-sorted, pre-tokenised, pre-padded batches of 32, session.run only."""
    inputs = raw_inputs(bundle_dir, precision, pairs, threads)
    inputs.backend.score(inputs.batches[0])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for batch in inputs.batches:
        inputs.backend.score(batch)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Row(
        f"{RAW} ({inputs.precision}, sorted x32)",
        "-",
        len(pairs),
        seconds,
        len(pairs) / seconds,
        inputs.tokens / seconds,
        pairs_per_cpu_s=len(pairs) / cpu if cpu > 0 else None,
        precision=inputs.precision,
    )


def raw_pass(
    bundle_dir: Path, precisions: Sequence[str], pairs: Sequence[tuple[str, str]], threads: int
) -> list[Row]:
    """Raw onnxruntime at each precision, each row printed as it is measured."""
    rows = []
    for precision in precisions:
        rows.append(raw_onnxruntime(bundle_dir, precision, pairs, threads))
        typer.echo(table(rows[-1:]))
    return rows
