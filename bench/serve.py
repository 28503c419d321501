"""`rlhf bench serve`: throughput and latency of the service against its two reference points, in one run.

    nice -n 10 rlhf bench serve --bundle bundles/rm-default --out runs/bench-serve

On the real hh-rlhf length mix (the embedded 2,000 pairs, each dialogue cut into question and answer by
`training.data.split_hh_dialogue`, so the text measured is the text trained and served), measured one
after the other on the same machine so the ratios are fair:

1. raw onnxruntime on pre-tokenised, globally length-sorted batches of 32 of the same bundle graph
   (the engine's limit: no HTTP, no tokenisation, the best possible padding);
2. the service (`python -m service`, a separate process) under closed-loop load at several client
   concurrencies, and open-loop load at half of its peak (p99/p50 must stay ≤ 3);
3. the service under the load RL trainers really send (`--per-sample`): one pair per request, many
   connections at once (OpenRLHF's agent executor, veRL's reward loop, slime), on each trainer route,
   beside 16-pair requests on 8 connections from the same load generator (`bench.loadgen`: raw
   sockets, pre-encoded requests, so the numbers describe the service; its own CPU is shown too);
4. a naive FastAPI + transformers server (one forward per request, no cross-request batching).

Each row also gives pairs per CPU second of the scoring process (from /proc): on a shared machine
wall-clock speed moves with other people's load, CPU-normalised speed much less. Raw onnxruntime is
measured before and after the service and the faster run is the reference. Rows with failed
requests are shown but never used in a ratio. Prints a markdown table and writes results.jsonl.
Torch-free: the servers run in their own processes (`bench.procs`); the naive one
(`bench.naive_server`, same max_length as the bundle) is started only when `--naive` is on.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer

from bench.loadgen import encode_post, run_closed_loop
from bench.procs import ServerProcess, free_port, running_server
from service.bundle import load_bundle
from service.encoding import Encoder, pad_batch
from training.data import embedded_pairs_path, split_hh_dialogue

NAIVE = "naive FastAPI+transformers"
# one sample per request, in the body each trainer sends (sources named in docs/ and tests/integrations)
PER_SAMPLE_BODIES: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "score": lambda q, a: {"pairs": [{"question": q, "answer": a}]},
    "get_reward": lambda q, a: {"query": [q + a], "prompts": [q], "labels": [""]},  # OpenRLHF
    "classify": lambda q, a: {"model": "rm", "input": q + a, "use_activation": False},  # veRL (vLLM)
    "slime/reward": lambda q, a: {"prompt": q, "response": a, "label": None},  # slime
}
REFERENCE_PAIRS, REFERENCE_CONNECTIONS = 16, 8  # the batched load single-pair requests are compared with
REFERENCE = f"{REFERENCE_CONNECTIONS} x {REFERENCE_PAIRS} pairs"


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


def load_hh_pairs(path: Path, limit: int, seed: int) -> list[tuple[str, str]]:
    """(question, answer) from chosen and rejected dialogues, cut as training cuts them, shuffled."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for key in ("chosen", "rejected"):
                split = split_hh_dialogue(record[key])
                if split is not None:
                    pairs.append(split)
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def token_count(encoder: Encoder, pairs: Sequence[tuple[str, str]]) -> int:
    """Tokens of ``pairs`` after the bundle's truncation: what the scoring actually processes."""
    return sum(len(e) for e in encoder.encode([q for q, _ in pairs], [a for _, a in pairs]))


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
    measured.service_cpu_s = cpu
    return measured


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| system | clients | pairs | pairs/s | tokens/s | pairs/CPU-s | p50 ms | p99 ms | errors "
        "| server CPU-s | load CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in rows:
        lines.append(
            f"| {r.system} | {r.concurrency} | {r.pairs} | {r.pairs_per_s:.1f} | {r.tokens_per_s:.0f} "
            f"| {cell(r.pairs_per_cpu_s, 1)} | {cell(r.p50_ms, 0)} | {cell(r.p99_ms, 0)} | {r.errors} "
            f"| {cell(r.service_cpu_s, 1)} | {cell(r.load_cpu_s, 1)} |"
        )
    return "\n".join(lines)


def measured_row(
    server: ServerProcess,
    system: str,
    label: str,
    pairs: int,
    tokens: int,
    load: Coroutine[Any, Any, Measured],
) -> Row:
    """Run one load against ``server``, timing the CPU seconds it and this process spent; print the row."""
    cpu, own = server.cpu_seconds(), time.process_time()
    result = asyncio.run(load)
    measured = row(system, label, pairs, tokens, result, server.cpu_seconds() - cpu)
    measured.load_cpu_s = time.process_time() - own
    typer.echo(table([measured]))
    return measured


def service_env(
    bundle: Path, precision: str, threads: int, port: int, max_queue_pairs: int, knobs: dict[str, Any]
) -> dict[str, str]:
    """This process's environment plus the service's settings; ``knobs`` left at None stay unset."""
    env = {
        **os.environ,
        "RLHF_BUNDLE": str(bundle), "RLHF_PRECISION": precision, "RLHF_PORT": str(port),
        "RLHF_INTRA_OP_THREADS": str(threads), "RLHF_LOG_LEVEL": "warning",
        "RLHF_MAX_QUEUE_PAIRS": str(max_queue_pairs),
    }  # fmt: skip
    env.update({key: str(value) for key, value in knobs.items() if value is not None})
    return env


def load_service(
    server: ServerProcess, work: Sequence[tuple[str, str]], tokens: int, levels: list[int], request_pairs: int
) -> list[Row]:
    """Closed loop at each client count, then open loop (Poisson arrivals) at half the peak reached."""
    asyncio.run(closed_loop(server.url, requests_of(work[:64], request_pairs), 4))  # warm-up
    bodies = requests_of(work, request_pairs)
    rows = [
        measured_row(server, "service", str(level), len(work), tokens, closed_loop(server.url, bodies, level))
        for level in levels
    ]
    peak = max(r.pairs_per_s for r in rows)
    load = open_loop(server.url, bodies, 0.5 * peak / request_pairs)
    rows.append(
        measured_row(server, "service", f"open loop {0.5 * peak:.0f} pairs/s", len(work), tokens, load)
    )
    return rows


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_load_row(
    server: ServerProcess,
    system: str,
    label: str,
    pairs: int,
    tokens: int,
    requests: list[bytes],
    connections: int,
) -> Row:
    """One closed-loop run of pre-encoded ``requests`` from `bench.loadgen`; print the row at once."""
    cpu = server.cpu_seconds()
    result = run_closed_loop(*host_port(server.url), requests, connections)
    measured = row(system, label, pairs, tokens, (result.seconds, result.latencies, result.errors),
                   server.cpu_seconds() - cpu)  # fmt: skip
    measured.load_cpu_s = result.cpu_seconds
    typer.echo(table([measured]))
    return measured


def per_sample_phase(
    server: ServerProcess, work: Sequence[tuple[str, str]], encoder: Encoder, levels: list[int],
    routes: list[str], n_pairs: int,
) -> list[Row]:  # fmt: skip
    """One pair per request on each route at each connection count, after the batched reference
    (REFERENCE_PAIRS per request on REFERENCE_CONNECTIONS connections), all from the same generator."""
    host, port = host_port(server.url)
    pairs = [work[i % len(work)] for i in range(n_pairs)]  # the hh mix, cycled up to n_pairs
    tokens = token_count(encoder, pairs)

    def encoded(path: str, bodies: list[dict[str, Any]]) -> list[bytes]:
        return [encode_post(host, port, path, body) for body in bodies]

    run_closed_loop(host, port, encoded("/score", requests_of(pairs[:64], 1)), 8)  # warm-up
    reference = encoded("/score", requests_of(pairs, REFERENCE_PAIRS))
    rows = [
        raw_load_row(server, "service /score", REFERENCE, n_pairs, tokens, reference, REFERENCE_CONNECTIONS)
    ]
    for route in routes:
        requests = encoded(f"/{route}", [PER_SAMPLE_BODIES[route](q, a) for q, a in pairs])
        for level in levels:
            rows.append(
                raw_load_row(
                    server, f"service /{route}", f"{level} x 1 pair", n_pairs, tokens, requests, level
                )
            )
    return rows


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


def run_naive(
    bundle: Path,
    model: str,
    threads: int,
    work: Sequence[tuple[str, str]],
    tokens: int,
    levels: list[int],
    request_pairs: int,
) -> list[Row]:
    """Start the naive server (truncating like the bundle does) and load it at up to 16 clients."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    max_length = load_bundle(bundle).manifest.max_length
    cmd = [sys.executable, "-m", "bench.naive_server", "--port", str(port)]
    cmd += ["--threads", str(threads), "--max-length", str(max_length)]
    if model:
        cmd += ["--model", model]
    with running_server(cmd, url, {**os.environ, "HF_HUB_OFFLINE": "1"}, probe="/healthz") as server:
        asyncio.run(closed_loop(url, requests_of(work[:16], request_pairs), 2))  # warm-up
        bodies = requests_of(work, request_pairs)
        return [
            measured_row(server, NAIVE, str(level), len(work), tokens, closed_loop(url, bodies, level))
            for level in levels
            if level <= 16
        ]


def summarise(rows: Sequence[Row]) -> dict[str, float]:
    """The ratios the targets name, from rows without failed requests (NaN where a side is missing)."""
    clean = [r for r in rows if r.errors == 0]
    raw = max(r.pairs_per_s for r in clean if r.system.startswith("raw"))
    peak = max(
        (r.pairs_per_s for r in clean if r.system == "service" and not r.concurrency.startswith("open")),
        default=float("nan"),
    )
    naive_peak = max((r.pairs_per_s for r in clean if r.system.startswith("naive")), default=float("nan"))
    half = next(r for r in rows if r.concurrency.startswith("open"))

    def best_cpu(match: Callable[[str], bool]) -> float:
        values = [r.pairs_per_cpu_s for r in clean if match(r.system) and r.pairs_per_cpu_s]
        return max(values, default=float("nan"))

    service = best_cpu(lambda system: system == "service")  # the httpx-loaded rows (per-sample: own ratios)
    return {
        "service_vs_raw": peak / raw,
        "service_vs_naive": peak / naive_peak,
        "p99_over_p50_at_half_load": (half.p99_ms or 0) / (half.p50_ms or 1),
        "service_vs_raw_per_cpu_s": service / best_cpu(lambda system: system.startswith("raw")),
        "service_vs_naive_per_cpu_s": service / best_cpu(lambda system: system.startswith("naive")),
    }


def report(rows: Sequence[Row], summary: dict[str, float]) -> str:
    """The markdown table of every row, then each ratio next to its target."""
    lines = [
        f"service peak / raw onnxruntime: {summary['service_vs_raw']:.2f}x (target >= 0.9)",
        f"service peak / naive peak: {summary['service_vs_naive']:.2f}x (target >= 3)",
        f"p99 / p50 at half of peak load: {summary['p99_over_p50_at_half_load']:.2f} (target <= 3)",
        f"per CPU second (robust to other load on a shared machine): service / raw "
        f"{summary['service_vs_raw_per_cpu_s']:.2f}x, service / naive "
        f"{summary['service_vs_naive_per_cpu_s']:.2f}x",
    ]
    lines += [
        f"{name}: {value:.2f}x (target >= 0.95 at the most connections)"
        for name, value in summary.items()
        if name.endswith("per server CPU-s")
    ]
    return table(rows) + "\n\n" + "\n".join(lines)


def write_results(
    out: Path, text: str, rows: Sequence[Row], summary: dict[str, float], request_pairs: int, threads: int
) -> None:
    """OUT/table.md (what was printed) and OUT/results.jsonl (one line per row, then the summary)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    with (out / "results.jsonl").open("w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps(asdict(r)) + "\n")
        handle.write(
            json.dumps({"summary": summary, "request_pairs": request_pairs, "threads": threads}) + "\n"
        )


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
    per_sample: Annotated[
        bool, typer.Option(help="also load the service with one pair per request, as RL trainers do")
    ] = True,
    per_sample_concurrency: Annotated[str, typer.Option(help="connections, comma-separated")] = "64,256",
    per_sample_pairs: Annotated[
        int, typer.Option(help="pairs (= requests) per per-sample measurement")
    ] = 1024,
    per_sample_routes: Annotated[
        str, typer.Option(help=f"routes, comma-separated, of: {', '.join(PER_SAMPLE_BODIES)}")
    ] = "score,get_reward,classify",
    max_batch_tokens: Annotated[int | None, typer.Option(help="service RLHF_MAX_BATCH_TOKENS")] = None,
    subbatch_tokens: Annotated[int | None, typer.Option(help="service RLHF_SUBBATCH_TOKENS")] = None,
    max_batch_pairs: Annotated[int | None, typer.Option(help="service RLHF_MAX_BATCH_PAIRS")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="service RLHF_BATCH_WAIT_MS")] = None,
    max_padding_ratio: Annotated[float | None, typer.Option(help="service RLHF_MAX_PADDING_RATIO")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="hh-rlhf style JSONL(.gz) with chosen/rejected; default the embedded sample"),
    ] = None,
    out: Annotated[Path, typer.Option(help="directory for results.jsonl and table.md")] = Path(
        "runs/bench-serve"
    ),
) -> None:
    """Service vs raw onnxruntime vs naive per-request server on the hh-rlhf length mix."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s: stop the servers
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    sample_levels = [int(c) for c in per_sample_concurrency.split(",") if c.strip()]
    routes = [r.strip().strip("/") for r in per_sample_routes.split(",") if r.strip()]
    unknown = sorted(set(routes) - set(PER_SAMPLE_BODIES))
    if unknown:
        raise typer.BadParameter(f"unknown routes {unknown}; known: {', '.join(PER_SAMPLE_BODIES)}")
    data_pairs = load_hh_pairs(data or embedded_pairs_path(), max(pairs, naive_pairs), seed=0)
    work = data_pairs[:pairs]
    encoder = load_bundle(bundle).encoder()
    tokens = token_count(encoder, work)
    typer.echo(f"{len(work)} pairs, {tokens / len(work):.0f} tokens/pair on average (after truncation)")

    # 1. raw onnxruntime, measured before and after the service (the machine may be shared): the
    # faster of the two is the reference, which can only make the service's ratio look worse
    rows: list[Row] = [raw_onnxruntime(bundle, precision, work, threads)]
    typer.echo(table(rows[-1:]))

    # 2. the service in its own process, closed then open loop
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    knobs = {
        "RLHF_MAX_BATCH_TOKENS": max_batch_tokens, "RLHF_SUBBATCH_TOKENS": subbatch_tokens,
        "RLHF_MAX_BATCH_PAIRS": max_batch_pairs, "RLHF_BATCH_WAIT_MS": batch_wait_ms,
        "RLHF_MAX_PADDING_RATIO": max_padding_ratio,
    }  # fmt: skip
    queue = max(2048, max(levels) * request_pairs * 2, max(sample_levels, default=0) * REFERENCE_PAIRS)
    env = service_env(bundle, precision, threads, port, queue, knobs)
    with running_server([sys.executable, "-m", "service"], url, env) as service:
        rows += load_service(service, work, tokens, levels, request_pairs)
        # 3. one pair per request, as the trainers send it
        if per_sample:
            rows += per_sample_phase(service, work, encoder, sample_levels, routes, per_sample_pairs)
    rows.append(raw_onnxruntime(bundle, precision, work, threads))
    typer.echo(table(rows[-1:]))

    # 4. the naive per-request server
    if naive:
        naive_work = data_pairs[:naive_pairs]
        rows += run_naive(
            bundle, naive_model, threads, naive_work, token_count(encoder, naive_work), levels, request_pairs
        )

    # 5. ratios against their targets, printed and written
    summary = {**summarise(rows), **per_sample_ratios(rows)}
    text = report(rows, summary)
    typer.echo("\n" + text)
    write_results(out, text, rows, summary, request_pairs, threads)
