"""`rlhf bench serve`: throughput and latency of the service against its two reference points, in one run.

    nice -n 10 rlhf bench serve --bundle bundles/rm-default --out runs/bench-serve

On the real hh-rlhf length mix (the embedded 2,000 pairs, dialogue split at the last "Assistant:"),
measured one after the other on the same machine so the ratios are fair:

1. raw onnxruntime on pre-tokenised, globally length-sorted batches of 32 of the same bundle graph
   (the engine's limit: no HTTP, no tokenisation, the best possible padding);
2. the service (`python -m service`, a separate process) under closed-loop load at several client
   concurrencies, and open-loop load at half of its peak (p99/p50 must stay ≤ 3);
3. a naive FastAPI + transformers server (one forward per request, no cross-request batching).

Each row also gives pairs per CPU second of the scoring process (from /proc): on a shared machine
wall-clock speed moves with other people's load, CPU-normalised speed much less. Raw onnxruntime is
measured before and after the service and the faster run is the reference. Rows with failed
requests are shown but never used in a ratio. Prints a markdown table and writes results.jsonl.
Torch-free: the naive server runs in its own process (`bench.naive_server`, same max_length
as the bundle), started only when `--naive` is on.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from service.bundle import load_bundle
from service.encoding import pad_batch

DATA = Path(__file__).resolve().parents[1] / "training" / "data" / "hh-rlhf-harmless-2000.jsonl.gz"
ASSISTANT = "\n\nAssistant:"


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


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_hh_pairs(path: Path, limit: int, seed: int) -> list[tuple[str, str]]:
    """(question, answer) from chosen and rejected dialogues, split at the last assistant turn."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for key in ("chosen", "rejected"):
                text = record[key]
                cut = text.rfind(ASSISTANT)
                if cut > 0:
                    pairs.append((text[:cut].strip(), text[cut + len(ASSISTANT) :].strip()))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def raw_onnxruntime(bundle_dir: Path, precision: str, pairs: Sequence[tuple[str, str]], threads: int) -> Row:
    """The engine's limit: length-sorted, pre-tokenised, pre-padded batches of 32, session.run only."""
    # onnxruntime loads only when a benchmark runs, so `rlhf --help` stays fast
    from service.backend import OnnxBackend
    from service.model import choose_precision

    bundle = load_bundle(bundle_dir)
    chosen = choose_precision(bundle, precision)  # type: ignore[arg-type]
    backend = OnnxBackend(bundle.model_path(chosen), bundle.manifest.input_names, threads)
    encoder = bundle.encoder()
    encoded = sorted(encoder.encode([q for q, _ in pairs], [a for _, a in pairs]), key=len)
    batches = [pad_batch(encoded[i : i + 32], encoder.pad_token_id) for i in range(0, len(encoded), 32)]
    backend.score(batches[0])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        backend.score(batch)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = sum(len(e) for e in encoded)
    name = f"raw onnxruntime ({chosen}, sorted x32)"
    return Row(
        name,
        "-",
        len(pairs),
        seconds,
        len(pairs) / seconds,
        tokens / seconds,
        pairs_per_cpu_s=len(pairs) / cpu,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    cmd: list[str], env: dict[str, str], url: str, probe: str, timeout: float = 120.0
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{cmd} exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
            )
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{cmd} did not become ready in {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def requests_of(pairs: Sequence[tuple[str, str]], size: int) -> list[dict[str, Any]]:
    return [
        {"pairs": [{"question": q, "answer": a} for q, a in pairs[i : i + size]]}
        for i in range(0, len(pairs), size)
    ]


Measured = tuple[float, list[float], list[str]]  # seconds, latencies, error messages


async def closed_loop(url: str, bodies: list[dict[str, Any]], concurrency: int) -> Measured:
    """`concurrency` clients, each sending its next request as soon as the previous one returns."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            response = await http.post(url + "/score", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:300]}")

    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


async def open_loop(url: str, bodies: list[dict[str, Any]], rate_rps: float) -> Measured:
    """Requests at a fixed rate (Poisson arrivals), whatever the latency: latency at a given load."""
    rng = random.Random(0)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        started = time.perf_counter()
        response = await http.post(url + "/score", json=body)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            errors.append(f"HTTP {response.status_code}: {response.text[:300]}")

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as http:
        tasks = []
        started = time.perf_counter()
        for body in bodies:
            tasks.append(asyncio.ensure_future(one(http, body)))
            await asyncio.sleep(rng.expovariate(rate_rps))
        await asyncio.gather(*tasks)
        return time.perf_counter() - started, latencies, errors


def row(system: str, concurrency: str, pairs: int, tokens: int, result: Measured, cpu: float) -> Row:
    """A measurement; one with errors is shown but never used in a ratio (its speed would be a lie)."""
    seconds, latencies, errors = result
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    first = errors[0] if errors else None
    if first:
        typer.echo(
            f"warning: {system} at {concurrency}: {len(errors)} failed requests, e.g. {first}", err=True
        )
    measured = Row(
        system, concurrency, pairs, seconds, pairs / seconds, tokens / seconds, float(p50), float(p99)
    )
    measured.errors, measured.first_error = len(errors), first
    measured.pairs_per_cpu_s = pairs / cpu if cpu > 0 else None
    return measured


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| system | clients | pairs | pairs/s | tokens/s | pairs/CPU-s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = f"{r.p50_ms:.0f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.0f}" if r.p99_ms is not None else "-"
        cpu = f"{r.pairs_per_cpu_s:.1f}" if r.pairs_per_cpu_s is not None else "-"
        lines.append(
            f"| {r.system} | {r.concurrency} | {r.pairs} | {r.pairs_per_s:.1f} | {r.tokens_per_s:.0f} "
            f"| {cpu} | {p50} | {p99} | {r.errors} |"
        )
    return "\n".join(lines)


def bench_serve_command(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = Path("bundles/rm-default"),
    precision: Annotated[str, typer.Option(help="auto | fp32 | int8 (auto = int8 if shipped)")] = "auto",
    threads: Annotated[int, typer.Option(help="onnxruntime / torch intra-op threads")] = 2,
    pairs: Annotated[int, typer.Option(help="hh-rlhf pairs per measurement")] = 384,
    concurrency: Annotated[str, typer.Option(help="client concurrencies, comma-separated")] = "1,4,16",
    request_pairs: Annotated[int, typer.Option(help="pairs per HTTP request")] = 16,
    naive: Annotated[
        bool, typer.Option(help="also run the FastAPI + transformers baseline (needs torch)")
    ] = True,
    naive_pairs: Annotated[int, typer.Option(help="pairs per naive measurement (it is slow)")] = 128,
    naive_model: Annotated[str, typer.Option(help="HF model dir for the naive server (default MiniLM)")] = "",
    max_batch_tokens: Annotated[int | None, typer.Option(help="service RLHF_MAX_BATCH_TOKENS")] = None,
    subbatch_tokens: Annotated[int | None, typer.Option(help="service RLHF_SUBBATCH_TOKENS")] = None,
    max_batch_pairs: Annotated[int | None, typer.Option(help="service RLHF_MAX_BATCH_PAIRS")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="service RLHF_BATCH_WAIT_MS")] = None,
    max_padding_ratio: Annotated[float | None, typer.Option(help="service RLHF_MAX_PADDING_RATIO")] = None,
    data: Annotated[Path, typer.Option(help="hh-rlhf style JSONL(.gz) with chosen/rejected")] = DATA,
    out: Annotated[Path, typer.Option(help="directory for results.jsonl and table.md")] = Path(
        "runs/bench-serve"
    ),
) -> None:
    """Service vs raw onnxruntime vs naive per-request server on the hh-rlhf length mix."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s: stop the servers
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    data_pairs = load_hh_pairs(data, max(pairs, naive_pairs), seed=0)
    work = data_pairs[:pairs]
    encoder = load_bundle(bundle).encoder()
    tokens = sum(len(e) for e in encoder.encode([q for q, _ in work], [a for _, a in work]))
    typer.echo(f"{len(work)} pairs, {tokens / len(work):.0f} tokens/pair on average (after truncation)")
    # raw onnxruntime is measured before and after the service (the machine may be shared): the
    # faster of the two is the reference, which can only make the service's ratio look worse
    rows: list[Row] = [raw_onnxruntime(bundle, precision, work, threads)]
    typer.echo(table(rows[-1:]))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "RLHF_BUNDLE": str(bundle), "RLHF_PRECISION": precision, "RLHF_PORT": str(port),
        "RLHF_INTRA_OP_THREADS": str(threads), "RLHF_LOG_LEVEL": "warning",
        "RLHF_MAX_QUEUE_PAIRS": str(max(2048, max(levels) * request_pairs * 2)),
    }  # fmt: skip
    for key, value in [
        ("RLHF_MAX_BATCH_TOKENS", max_batch_tokens),
        ("RLHF_SUBBATCH_TOKENS", subbatch_tokens),
        ("RLHF_MAX_BATCH_PAIRS", max_batch_pairs),
        ("RLHF_BATCH_WAIT_MS", batch_wait_ms),
        ("RLHF_MAX_PADDING_RATIO", max_padding_ratio),
    ]:
        if value is not None:
            env[key] = str(value)
    service = start([sys.executable, "-m", "service"], env, url, "/readyz")
    try:
        asyncio.run(closed_loop(url, requests_of(work[:64], request_pairs), 4))  # warm-up
        for level in levels:
            cpu = cpu_seconds(service.pid)
            result = asyncio.run(closed_loop(url, requests_of(work, request_pairs), level))
            rows.append(row("service", str(level), len(work), tokens, result, cpu_seconds(service.pid) - cpu))
            typer.echo(table(rows[-1:]))
        peak = max(r.pairs_per_s for r in rows if r.system == "service")
        rate = 0.5 * peak / request_pairs
        cpu = cpu_seconds(service.pid)
        result = asyncio.run(open_loop(url, requests_of(work, request_pairs), rate))
        label = f"open loop {0.5 * peak:.0f} pairs/s"
        rows.append(row("service", label, len(work), tokens, result, cpu_seconds(service.pid) - cpu))
        typer.echo(table(rows[-1:]))
    finally:
        stop(service)
    rows.append(raw_onnxruntime(bundle, precision, work, threads))
    typer.echo(table(rows[-1:]))

    if naive:
        naive_work = data_pairs[:naive_pairs]
        naive_tokens = sum(
            len(e) for e in encoder.encode([q for q, _ in naive_work], [a for _, a in naive_work])
        )
        port = free_port()
        naive_url = f"http://127.0.0.1:{port}"
        max_length = load_bundle(bundle).manifest.max_length  # truncate like the bundle does
        cmd = [sys.executable, "-m", "bench.naive_server", "--port", str(port)]
        cmd += ["--threads", str(threads), "--max-length", str(max_length)]
        if naive_model:
            cmd += ["--model", naive_model]
        server = start(cmd, {"HF_HUB_OFFLINE": "1"}, naive_url, "/healthz")
        try:
            asyncio.run(closed_loop(naive_url, requests_of(naive_work[:16], request_pairs), 2))  # warm-up
            for level in [c for c in levels if c <= 16]:
                cpu = cpu_seconds(server.pid)
                result = asyncio.run(closed_loop(naive_url, requests_of(naive_work, request_pairs), level))
                cpu = cpu_seconds(server.pid) - cpu
                name = "naive FastAPI+transformers"
                rows.append(row(name, str(level), len(naive_work), naive_tokens, result, cpu))
                typer.echo(table(rows[-1:]))
        finally:
            stop(server)

    clean = [r for r in rows if r.errors == 0]
    raw = max(r.pairs_per_s for r in clean if r.system.startswith("raw"))
    peak = max(
        (r.pairs_per_s for r in clean if r.system == "service" and not r.concurrency.startswith("open")),
        default=float("nan"),
    )
    naive_peak = max((r.pairs_per_s for r in clean if r.system.startswith("naive")), default=float("nan"))
    half = next(r for r in rows if r.concurrency.startswith("open"))

    def best_cpu(prefix: str) -> float:
        values = [r.pairs_per_cpu_s for r in clean if r.system.startswith(prefix) and r.pairs_per_cpu_s]
        return max(values, default=float("nan"))

    summary = {
        "service_vs_raw": peak / raw,
        "service_vs_naive": peak / naive_peak,
        "p99_over_p50_at_half_load": (half.p99_ms or 0) / (half.p50_ms or 1),
        "service_vs_raw_per_cpu_s": best_cpu("service") / best_cpu("raw"),
        "service_vs_naive_per_cpu_s": best_cpu("service") / best_cpu("naive"),
    }
    text = (
        table(rows)
        + "\n\n"
        + "\n".join(
            [
                f"service peak / raw onnxruntime: {summary['service_vs_raw']:.2f}x (target >= 0.9)",
                f"service peak / naive peak: {summary['service_vs_naive']:.2f}x (target >= 3)",
                f"p99 / p50 at half of peak load: {summary['p99_over_p50_at_half_load']:.2f} (target <= 3)",
                f"per CPU second (robust to other load on a shared machine): service / raw "
                f"{summary['service_vs_raw_per_cpu_s']:.2f}x, service / naive "
                f"{summary['service_vs_naive_per_cpu_s']:.2f}x",
            ]
        )
    )
    typer.echo("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    with (out / "results.jsonl").open("w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps(asdict(r)) + "\n")
        handle.write(
            json.dumps({"summary": summary, "request_pairs": request_pairs, "threads": threads}) + "\n"
        )
