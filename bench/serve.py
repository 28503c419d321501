"""`rlhf bench serve`: throughput and latency of the service against its two reference points, in one run.

    nice -n 10 rlhf bench serve --bundle bundles/rm-default --out runs/bench-serve
    nice -n 10 rlhf bench serve --bundle bundles/my-chat-rm --precision fp32,int8 --no-naive

On the real hh-rlhf length mix (the embedded 2,000 pairs, each dialogue cut into question and answer by
`training.data.split_hh_dialogue`, so the text measured is the text trained and served), measured one
after the other on the same machine so the ratios are fair:

1. raw onnxruntime on pre-tokenised, globally length-sorted batches of 32 of the same bundle graph
   (the engine's limit: no HTTP, no tokenisation, the best possible padding; `bench.serve_raw`), the
   pairs encoded by the bundle's own encoder, as the service encodes them;
2. the service (`python -m service`, a separate process) under closed-loop load at several client
   concurrencies, and open-loop load at half of its peak (p99/p50 must stay ≤ 3);
3. the service under the load RL trainers really send (`--per-sample`): one pair per request, many
   connections at once (OpenRLHF's agent executor, veRL's reward loop, slime), on each trainer route,
   beside 16-pair requests on 8 connections from the same load generator (`bench.loadgen`: raw
   sockets, pre-encoded requests, so the numbers describe the service; its own CPU is shown too);
   the trainer routes get each sample as the trainer renders it for the bundle (`trainer_sample`);
4. a naive FastAPI + transformers server (one forward per request, no cross-request batching), for
   a `pair` bundle only (it reads pairs through the pair template; a `chat` bundle skips it, saying so).

Any bundle: a `pair` cross-encoder or a `chat` decoder (requests are pairs, which the service turns
into [user, assistant] conversations; token counts are the bundle's encoder's). ``--precision`` takes
one precision or a list (``fp32,int8``): then raw onnxruntime runs at each, then one service process
per precision, then raw again, and the summary gives service / raw per precision and int8 / fp32 per
system (`bench.serve_report`). A precision the bundle lacks (int8 that failed its gate) is skipped
with the bundle's reason, in the table and in results.jsonl.

Each row also gives pairs per CPU second of the scoring process (from /proc): on a shared machine
wall-clock speed moves with other people's load, CPU-normalised speed much less. Raw onnxruntime is
measured before and after the services and the faster run is the reference. Rows with failed
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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import httpx
import numpy as np
import typer

from bench.loadgen import encode_post, run_closed_loop
from bench.procs import ServerProcess, free_port, running_server
from bench.serve_raw import raw_pass
from bench.serve_report import (
    REFERENCE,
    REFERENCE_CONNECTIONS,
    REFERENCE_PAIRS,
    Row,
    report,
    summarise_run,
    table,
    write_results,
)
from service.bundle import Bundle, BundleError, Precision, load_bundle
from service.chat import ChatEncoder
from service.conversation import ConversationError, pair_to_conversation
from service.encoding import Encoder
from training.data import embedded_pairs_path, split_hh_dialogue

NAIVE = "naive FastAPI+transformers"
NAIVE_CHAT = (
    "the naive server reads pairs through the tokenizer's pair template, not a chat bundle's chat "
    "template, so its speed would describe other inputs"
)
PRECISIONS = ("auto", "fp32", "int8", "fp16")  # what --precision may list (auto: the bundle's default)
# one sample per request, in the body each trainer sends (sources named in docs/ and tests/integrations)
PER_SAMPLE_BODIES: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "score": lambda q, a: {"pairs": [{"question": q, "answer": a}]},
    "get_reward": lambda q, a: {"query": [q + a], "prompts": [q], "labels": [""]},  # OpenRLHF
    "classify": lambda q, a: {"model": "rm", "input": q + a, "use_activation": False},  # veRL (vLLM)
    "slime/reward": lambda q, a: {"prompt": q, "response": a, "label": None},  # slime
}


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


@dataclass(frozen=True)
class Precisions:
    """What ``--precision`` asked for, resolved against the bundle."""

    measured: list[Precision]  # in the order asked, `auto` resolved to the bundle's default, each once
    skipped: dict[str, str]  # asked, but the bundle has no such graph (int8 failed its gate): why
    multi: bool  # a list was asked: the summary keys carry their precision


def choose_precisions(bundle: Bundle, text: str) -> Precisions:
    """``"auto"``, ``"int8"``, ``"fp32,int8"`` ... → the graphs to measure; a precision the bundle does
    not ship is skipped with the bundle's reason, and BadParameter when none is left."""
    asked = [p.strip() for p in text.split(",") if p.strip()]
    if not asked or any(p not in PRECISIONS for p in asked):
        raise typer.BadParameter(
            f"{text!r}: give one or more of {', '.join(PRECISIONS)}, comma-separated",
            param_hint="--precision",
        )
    resolved = list(
        dict.fromkeys(bundle.default_precision() if p == "auto" else cast(Precision, p) for p in asked)
    )
    measured: list[Precision] = []
    skipped: dict[str, str] = {}
    for precision in resolved:
        try:
            bundle.model_path(precision)
            measured.append(precision)
        except BundleError as exc:  # its message names the precision, why it is missing, what is there
            skipped[precision] = str(exc)
    if not measured:
        raise typer.BadParameter("; ".join(skipped.values()), param_hint="--precision")
    return Precisions(measured, skipped, multi=len(resolved) > 1)


def trainer_sample(encoder: Encoder, question: str, answer: str) -> tuple[str, str]:
    """(prompt, response) as an RL trainer sends a sample to this bundle's trainer routes.

    A pair bundle: the hh-rlhf text as is (its policy writes hh turns). A chat bundle: the text a policy
    with the bundle's own chat template renders (this project's setup: SmolLM2 policy, SmolLM2 reward
    model), the prompt with its generation prompt, the response with the template's end of turn, as
    OpenRLHF decodes it with special tokens kept. The service reads that text back into the same
    conversation `/score` makes of the pair, so both score the same tokens. A template that does not
    render the prompt as the opening of the whole conversation falls back to the hh text.
    """
    if not isinstance(encoder, ChatEncoder):
        return question, answer
    conversation = pair_to_conversation(question, answer)
    try:
        prompt = encoder.template.render(conversation[:-1], add_generation_prompt=True)
        whole = encoder.render(conversation)
    except ConversationError:
        return question, answer
    if not whole.startswith(prompt):
        return question, answer
    return prompt, whole[len(prompt) :].rstrip()


def token_count(encoder: Encoder, pairs: Sequence[tuple[str, str]]) -> int:
    """Tokens of ``pairs`` after the bundle's truncation: what the scoring actually processes."""
    return sum(len(e) for e in encoder.encode([q for q, _ in pairs], [a for _, a in pairs]))


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


def row(
    system: str, concurrency: str, pairs: int, tokens: int, result: Measured, cpu: float,
    precision: str | None = None,
) -> Row:  # fmt: skip
    """A measurement; one with errors is shown but never used in a ratio (its speed would be a lie)."""
    seconds, latencies, errors = result
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    first = errors[0] if errors else None
    if first:
        typer.echo(
            f"warning: {system} at {concurrency}: {len(errors)} failed requests, e.g. {first}", err=True
        )
    measured = Row(
        system, concurrency, pairs, seconds, pairs / seconds, tokens / seconds, float(p50), float(p99),
        precision=precision,
    )  # fmt: skip
    measured.errors, measured.first_error = len(errors), first
    measured.pairs_per_cpu_s = pairs / cpu if cpu > 0 else None
    measured.service_cpu_s = cpu
    return measured


def measured_row(
    server: ServerProcess,
    system: str,
    label: str,
    pairs: int,
    tokens: int,
    load: Coroutine[Any, Any, Measured],
    precision: str | None = None,
) -> Row:
    """Run one load against ``server`` (serving ``precision``), timing the CPU seconds it and this
    process spent; print the row."""
    cpu, own = server.cpu_seconds(), time.process_time()
    result = asyncio.run(load)
    measured = row(system, label, pairs, tokens, result, server.cpu_seconds() - cpu, precision)
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
    server: ServerProcess, work: Sequence[tuple[str, str]], tokens: int, levels: list[int], request_pairs: int,
    precision: str | None = None,
) -> list[Row]:  # fmt: skip
    """Closed loop at each client count, then open loop (Poisson arrivals) at half the peak reached."""
    asyncio.run(closed_loop(server.url, requests_of(work[:64], request_pairs), 4))  # warm-up
    bodies = requests_of(work, request_pairs)

    def measure(label: str, load: Coroutine[Any, Any, Measured]) -> Row:
        return measured_row(server, "service", label, len(work), tokens, load, precision)

    rows = [measure(str(level), closed_loop(server.url, bodies, level)) for level in levels]
    peak = max(r.pairs_per_s for r in rows)
    rows.append(
        measure(
            f"open loop {0.5 * peak:.0f} pairs/s", open_loop(server.url, bodies, 0.5 * peak / request_pairs)
        )
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
    precision: str | None = None,
) -> Row:
    """One closed-loop run of pre-encoded ``requests`` from `bench.loadgen`; print the row at once."""
    cpu = server.cpu_seconds()
    result = run_closed_loop(*host_port(server.url), requests, connections)
    measured = row(system, label, pairs, tokens, (result.seconds, result.latencies, result.errors),
                   server.cpu_seconds() - cpu, precision)  # fmt: skip
    measured.load_cpu_s = result.cpu_seconds
    typer.echo(table([measured]))
    return measured


def per_sample_phase(
    server: ServerProcess, work: Sequence[tuple[str, str]], encoder: Encoder, levels: list[int],
    routes: list[str], n_pairs: int, precision: str | None = None,
) -> list[Row]:  # fmt: skip
    """One pair per request on each route at each connection count, after the batched reference
    (REFERENCE_PAIRS per request on REFERENCE_CONNECTIONS connections), all from the same generator.
    Each trainer route is sent the sample as that trainer renders it for this bundle (`trainer_sample`)."""
    host, port = host_port(server.url)
    pairs = [work[i % len(work)] for i in range(n_pairs)]  # the hh mix, cycled up to n_pairs
    tokens = token_count(encoder, pairs)

    def encoded(path: str, bodies: list[dict[str, Any]]) -> list[bytes]:
        return [encode_post(host, port, path, body) for body in bodies]

    run_closed_loop(host, port, encoded("/score", requests_of(pairs[:64], 1)), 8)  # warm-up
    reference = encoded("/score", requests_of(pairs, REFERENCE_PAIRS))
    rows = [
        raw_load_row(server, "service /score", REFERENCE, n_pairs, tokens, reference, REFERENCE_CONNECTIONS,
                     precision)
    ]  # fmt: skip
    rendered = [trainer_sample(encoder, q, a) for q, a in pairs]
    for route in routes:
        samples = pairs if route == "score" else rendered  # /score takes pairs, whatever the bundle
        requests = encoded(f"/{route}", [PER_SAMPLE_BODIES[route](q, a) for q, a in samples])
        for level in levels:
            label = f"{level} x 1 pair"
            rows.append(
                raw_load_row(server, f"service /{route}", label, n_pairs, tokens, requests, level, precision)
            )
    return rows


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


def bench_serve_command(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = Path("bundles/rm-default"),
    precision: Annotated[
        str,
        typer.Option(
            help="auto | fp32 | int8, or a comma-separated list measured in one run (fp32,int8); "
            "auto = int8 if shipped; a precision the bundle lacks is skipped with its reason"
        ),
    ] = "auto",
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
    """Service vs raw onnxruntime vs naive per-request server on the hh-rlhf length mix, at one precision
    or several in one run (``--precision fp32,int8``)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s: stop the servers
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    sample_levels = [int(c) for c in per_sample_concurrency.split(",") if c.strip()]
    routes = [r.strip().strip("/") for r in per_sample_routes.split(",") if r.strip()]
    unknown = sorted(set(routes) - set(PER_SAMPLE_BODIES))
    if unknown:
        raise typer.BadParameter(f"unknown routes {unknown}; known: {', '.join(PER_SAMPLE_BODIES)}")
    try:
        loaded = load_bundle(bundle)
    except BundleError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bundle") from exc
    choice = choose_precisions(loaded, precision)
    skipped = dict(choice.skipped)
    for what, why in skipped.items():
        typer.echo(f"{what} not measured: {why}", err=True)
    encoder = loaded.encoder()
    if naive and encoder.input_format != "pair":
        skipped["naive"] = NAIVE_CHAT
        naive = False
    data_pairs = load_hh_pairs(data or embedded_pairs_path(), max(pairs, naive_pairs), seed=0)
    work = data_pairs[:pairs]
    tokens = token_count(encoder, work)
    typer.echo(
        f"{len(work)} pairs, {tokens / len(work):.0f} tokens/pair on average (after truncation), "
        f"{encoder.input_format} format, precision {', '.join(choice.measured)}"
    )

    # 1. raw onnxruntime, measured before and after the services (the machine may be shared): the
    # faster of the two is the reference, which can only make the service's ratio look worse
    rows = raw_pass(bundle, choice.measured, work, threads)

    # 2. the service in its own process per precision: closed then open loop, then (3.) one pair per
    # request, as the trainers send it
    knobs = {
        "RLHF_MAX_BATCH_TOKENS": max_batch_tokens, "RLHF_SUBBATCH_TOKENS": subbatch_tokens,
        "RLHF_MAX_BATCH_PAIRS": max_batch_pairs, "RLHF_BATCH_WAIT_MS": batch_wait_ms,
        "RLHF_MAX_PADDING_RATIO": max_padding_ratio,
    }  # fmt: skip
    queue = max(2048, max(levels) * request_pairs * 2, max(sample_levels, default=0) * REFERENCE_PAIRS)
    for chosen in choice.measured:
        port = free_port()
        env = service_env(bundle, chosen, threads, port, queue, knobs)
        with running_server([sys.executable, "-m", "service"], f"http://127.0.0.1:{port}", env) as service:
            rows += load_service(service, work, tokens, levels, request_pairs, chosen)
            if per_sample:
                rows += per_sample_phase(
                    service, work, encoder, sample_levels, routes, per_sample_pairs, chosen
                )
    rows += raw_pass(bundle, choice.measured, work, threads)

    # 4. the naive per-request server
    if naive:
        naive_work = data_pairs[:naive_pairs]
        rows += run_naive(
            bundle, naive_model, threads, naive_work, token_count(encoder, naive_work), levels, request_pairs
        )

    # 5. ratios against their targets, printed and written
    summary = summarise_run(rows, choice.measured, choice.multi)
    text = report(rows, summary, choice.measured if choice.multi else (), skipped)
    typer.echo("\n" + text)
    extra = {"precisions": choice.measured, "skipped": skipped, "input_format": encoder.input_format}
    write_results(out, text, rows, summary, request_pairs, threads, extra)
