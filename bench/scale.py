"""`rlhf bench scale`: aggregate throughput of 1 replica against N, behind the client's URL spreading.

    rlhf bench scale --bundle bundles/rm-default --replicas 2 --pairs 400 --rounds 3 --out runs/bench-scale

Each replica is a real `python -m service` process on its own loopback port with one onnxruntime thread
(RLHF_INTRA_OP_THREADS=1, the container's 1-core request). One `AsyncRewardClient` given the replicas'
URLs spreads chunks round-robin over them, as a trainer would. All N replicas start once; the same
pairs (hh-rlhf dialogues, the real length mix) are then scored through the first 1, 2 ... N of them,
rounds interleaved (1, 2, 1, 2 ...) so that other load on a shared machine hits every count alike,
and the printed ratio compares like with like within one run. CPU time of the replicas, of the load
generator (this process) and of the whole machine is read from /proc, which shows what limits scaling:
on a 2-core machine the client's JSON and HTTP work competes with the replicas for the same cores.

Torch-free, loopback only, bounded: every wait has a timeout and the replicas are stopped on exit.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench.procs import ServerFailed, ServerProcess, free_port, start_server
from service.client import AsyncRewardClient, ScoreResult
from training.data import embedded_pairs_path, split_hh_dialogue

STOP_TIMEOUT_S = 20.0  # a replica drains its (empty) queue on SIGTERM


class BenchError(RuntimeError):
    """The data could not be read as hh-rlhf pairs, or holds too few; the message says why."""


def load_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    """(question, answer) pairs from hh-rlhf `chosen`/`rejected` dialogues, cut as training cuts them."""
    pairs: list[tuple[str, str]] = []
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
            dialogues = (str(record["chosen"]), str(record["rejected"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BenchError(f"{path}:{number}: not an hh-rlhf record with chosen/rejected ({exc})") from exc
        pairs.extend(split for split in map(split_hh_dialogue, dialogues) if split is not None)
        if len(pairs) >= limit:
            return pairs[:limit]
    raise BenchError(f"{path} holds {len(pairs)} pairs, fewer than --pairs {limit}")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / ticks, sum(values) / ticks


def start_replica(bundle: Path, threads: int, precision: str, log_dir: Path) -> ServerProcess:
    """`python -m service` on a free port, logging to LOG_DIR/replica-PORT.log; not waited for."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}  # no inherited keys
    env.update(
        RLHF_BUNDLE=str(bundle),
        RLHF_HOST="127.0.0.1",
        RLHF_PORT=str(port),
        RLHF_INTRA_OP_THREADS=str(threads),
        RLHF_PRECISION=precision,
        RLHF_LOG_LEVEL="warning",
    )
    command = [sys.executable, "-m", "service"]
    return start_server(command, f"http://127.0.0.1:{port}", env, log_dir / f"replica-{port}.log")


@contextmanager
def running_replicas(
    count: int, bundle: Path, threads: int, precision: str, log_dir: Path
) -> Iterator[list[ServerProcess]]:
    """All replicas started at once (they load in parallel), then each waited for; stopped on exit."""
    with ExitStack() as stack:
        replicas = []
        for _ in range(count):
            replica = start_replica(bundle, threads, precision, log_dir)
            stack.callback(replica.stop, STOP_TIMEOUT_S)
            replicas.append(replica)
        for replica in replicas:
            replica.wait_ready()
        yield replicas


@dataclass
class Round:
    replicas: int
    round: int
    pairs: int
    seconds: float
    pairs_per_s: float
    failed: int
    replica_cpu_cores: float  # CPU seconds of all replicas / wall seconds
    client_cpu_cores: float  # CPU seconds of this process (the load generator) / wall seconds
    machine_busy_cores: float  # every process on the machine, other users included
    model_version: str | None


async def score_all(
    urls: list[str], pairs: list[tuple[str, str]], chunk_size: int, concurrency: int, timeout: float
) -> tuple[ScoreResult, float]:
    """Time one `score` call over all pairs, spread over every URL."""
    async with AsyncRewardClient(
        urls, chunk_size=chunk_size, max_concurrency=concurrency, timeout=60.0
    ) as client:
        started = time.perf_counter()
        result = await asyncio.wait_for(client.score(pairs), timeout=timeout)
        return result, time.perf_counter() - started


def warm_up(replicas: Sequence[ServerProcess], pairs: list[tuple[str, str]]) -> None:
    """One small request per replica, so session start-up costs stay out of the timed window."""
    body = {"pairs": [{"question": q, "answer": a} for q, a in pairs[:4]]}
    with httpx.Client(timeout=60.0) as http:
        for replica in replicas:
            http.post(replica.url + "/score", json=body).raise_for_status()


def measure(
    used: int,
    replicas: list[ServerProcess],
    pairs: list[tuple[str, str]],
    index: int,
    chunk_size: int,
    concurrency: int,
    timeout: float,
) -> Round:
    """Score `pairs` through the first `used` replicas; CPU is read for all (the idle ones use ~0)."""
    urls = [r.url for r in replicas[:used]]
    cpu_before = [r.cpu_seconds() for r in replicas]
    client_before = time.process_time()
    busy_before, _ = machine_busy_seconds()
    wall_before = time.perf_counter()
    result, seconds = asyncio.run(score_all(urls, pairs, chunk_size, concurrency, timeout))
    wall = time.perf_counter() - wall_before  # the CPU shares below use this same window
    busy_after, _ = machine_busy_seconds()
    replica_cpu = sum(r.cpu_seconds() - b for r, b in zip(replicas, cpu_before, strict=True))
    return Round(
        replicas=used,
        round=index,
        pairs=len(pairs),
        seconds=round(seconds, 3),
        pairs_per_s=round((len(pairs) - result.failed) / seconds, 2),
        failed=result.failed,
        replica_cpu_cores=round(replica_cpu / wall, 2),
        client_cpu_cores=round((time.process_time() - client_before) / wall, 2),
        machine_busy_cores=round((busy_after - busy_before) / wall, 2),
        model_version=result.model_version,
    )


def run_scale(
    bundle: Path,
    pairs: list[tuple[str, str]],
    max_replicas: int,
    rounds: int,
    threads: int,
    precision: str,
    chunk_size: int,
    concurrency: int,
    timeout: float,
    log_dir: Path,
) -> list[Round]:
    """Score the same pairs through 1, 2 ... max_replicas replicas, `rounds` times each.

    All replicas start once; the client is given the first k URLs. Rounds interleave the replica
    counts (1, 2, 1, 2 ...) so that load from other processes on a shared machine hits both alike.
    """
    results: list[Round] = []
    with running_replicas(max_replicas, bundle, threads, precision, log_dir) as replicas:
        warm_up(replicas, pairs)
        for index in range(rounds):
            for used in range(1, max_replicas + 1):
                results.append(measure(used, replicas, pairs, index, chunk_size, concurrency, timeout))
                typer.echo(
                    f"  {used} replica(s), round {index + 1}/{rounds}: {results[-1].pairs_per_s} pairs/s"
                )
    return results


@dataclass
class Summary:
    """Medians over rounds, keyed by replica count."""

    pairs_per_s: dict[int, float]
    speedup_vs_1: dict[int, float]
    replica_cpu_cores: dict[int, float]
    client_cpu_cores: dict[int, float]
    machine_busy_cores: dict[int, float]
    pairs_per_replica_cpu_s: dict[int, float]  # throughput per CPU second the replicas actually got
    cpu_count: int | None

    def table(self) -> str:
        lines = [
            "replicas  pairs/s  speedup  pairs/replica-cpu-s  replica-cores  client-cores  other-processes-cores"
        ]
        for n, value in self.pairs_per_s.items():
            other = self.machine_busy_cores[n] - self.replica_cpu_cores[n] - self.client_cpu_cores[n]
            lines.append(
                f"{n:>8}  {value:>7.1f}  {self.speedup_vs_1[n]:>6.2f}x  {self.pairs_per_replica_cpu_s[n]:>19.1f}"
                f"  {self.replica_cpu_cores[n]:>13.2f}  {self.client_cpu_cores[n]:>12.2f}  {max(other, 0.0):>21.2f}"
            )
        return "\n".join(lines)


def summarise(results: list[Round]) -> Summary:
    by_count: dict[int, list[Round]] = {}
    for r in results:
        by_count.setdefault(r.replicas, []).append(r)

    def median(field: str) -> dict[int, float]:
        return {n: round(statistics.median(getattr(r, field) for r in rs), 2) for n, rs in by_count.items()}

    rate = median("pairs_per_s")
    return Summary(
        pairs_per_s=rate,
        speedup_vs_1={n: round(v / rate[1], 2) for n, v in rate.items()},
        replica_cpu_cores=median("replica_cpu_cores"),
        client_cpu_cores=median("client_cpu_cores"),
        machine_busy_cores=median("machine_busy_cores"),
        pairs_per_replica_cpu_s={
            n: round(statistics.median(r.pairs_per_s / max(r.replica_cpu_cores, 1e-9) for r in rs), 1)
            for n, rs in by_count.items()
        },
        cpu_count=os.cpu_count(),
    )


def bench_scale_command(
    bundle: Annotated[Path, typer.Option(help="bundle directory served by every replica")] = Path(
        "bundles/rm-default"
    ),
    replicas: Annotated[int, typer.Option(min=1, max=8, help="largest replica count (1 .. N are run)")] = 2,
    pairs: Annotated[int, typer.Option(min=16, help="pairs scored per round")] = 400,
    rounds: Annotated[int, typer.Option(min=1, help="timed rounds per replica count (median reported)")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime threads per replica")] = 1,
    precision: Annotated[str, typer.Option(help="auto | fp32 | int8")] = "auto",
    chunk_size: Annotated[int, typer.Option(min=1, help="pairs per HTTP request")] = 32,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight (all replicas together)")] = 8,
    data: Annotated[Path | None, typer.Option(help="hh-rlhf JSONL(.gz); default the embedded sample")] = None,
    timeout: Annotated[float, typer.Option(help="seconds allowed for one round")] = 300.0,
    out: Annotated[
        Path | None, typer.Option(help="directory for rounds.jsonl, summary.json, replica logs")
    ] = None,
) -> None:
    """Aggregate pairs/s of 1 vs N single-threaded replicas behind the client's multi-URL spreading."""
    try:
        texts = load_pairs(data or embedded_pairs_path(), pairs)
    except (BenchError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not (bundle / "manifest.json").is_file():
        typer.echo(f"error: {bundle} is not a bundle (no manifest.json); pass --bundle", err=True)
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        log_dir = out or Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        typer.echo(
            f"{len(texts)} pairs, {os.cpu_count()} cores, bundle {bundle}, {threads} thread(s)/replica"
        )
        try:
            results = run_scale(
                bundle, texts, replicas, rounds, threads, precision, chunk_size, concurrency, timeout, log_dir
            )
        except (BenchError, ServerFailed, TimeoutError, httpx.HTTPError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    summary = summarise(results)
    typer.echo(summary.table())
    if out is not None:
        with (out / "rounds.jsonl").open("a", encoding="utf-8") as handle:
            for r in results:
                handle.write(json.dumps(asdict(r)) + "\n")
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {out / 'rounds.jsonl'} and {out / 'summary.json'}")
