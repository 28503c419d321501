"""What one request costs the service: CPU per single-pair request against 16-pair requests, one run.

    nice -n 15 python -m bench.request_cost --bundle runs/demo-s4/bundles/reward-demo --pairs 512 --rounds 3
    nice -n 15 python -m bench.request_cost ... --max-chars 40            # short pairs: per-request cost shows
    nice -n 15 python -m bench.request_cost ... --py-spy runs/stacks.txt  # and where the Python time goes

Why: RL trainers send one pair per request (OpenRLHF's agent executor, veRL's reward loop), so whatever
the service spends per *request* (HTTP parsing, validation, the hand-off to the batcher, metrics, the
response) is paid once per pair; the target is single-pair load at >= 0.95x the pairs per service
CPU-second of 16-pair requests. `rlhf bench serve --per-sample` measures that ratio among many other
things; this harness measures only it, in rounds that alternate the 16-pair reference with each
route's single-pair load (so a change in the machine's other load hits both sides), and splits the
service's CPU into its event-loop thread (HTTP, validation, routes, the batcher task) and its other
threads (tokenisation, onnxruntime). CPU time comes from /proc (`bench.procs`), so another job on the
same cores moves the figures much less than wall time; the per-round ratios show how much it still does.

The table: pairs per service CPU-second and its ratio to the reference; CPU per request, split; "extra
CPU ms/request", what a single-pair request costs beyond the reference's CPU per pair (the per-request
overhead); pairs per onnxruntime run and padded tokens per pair, from the service's /metrics, because
how the batcher cuts a load moves the engine's CPU per pair whatever the request size.

`--py-spy FILE` samples the service with py-spy (`pip install py-spy`; not a project dependency) during
the single-pair loads, only while a thread holds the GIL (Python work; onnxruntime and the tokenizer
release it), writes the raw stacks to FILE and prints the functions with the most samples, by their own
samples and with their callees. py-spy reads the process from outside, so the figures of that run stay
close to the service's own. Not an `rlhf` command: run it as a module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from bench.loadgen import encode_post, run_closed_loop
from bench.procs import ServerProcess, free_port, running_server
from bench.serve import PER_SAMPLE_BODIES, load_hh_pairs, requests_of, service_env
from training.data import embedded_pairs_path

REFERENCE = "score x16"  # the batched reference: /score, 16 pairs per request
REFERENCE_PAIRS = 16
REFERENCE_CONNECTIONS = 8


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread of `pid` (/proc/PID/task/TID/stat, fields 14 and 15)."""
    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    """CPU the service spent on one kind of load, summed over the rounds."""

    name: str
    requests: int = 0
    pairs: int = 0
    cpu_s: float = 0.0  # every thread of the service process
    loop_cpu_s: float = 0.0  # its main thread: the event loop (HTTP, validation, routes, batcher task)
    errors: int = 0
    first_error: str | None = None
    runs: float = 0.0  # onnxruntime runs (rlhf_batch_pairs_count)
    padded_tokens: float = 0.0  # tokens those runs computed, padding included (rlhf_batch_tokens_sum)
    rounds: list[float] = field(default_factory=list)  # pairs per CPU-second of each round

    @property
    def pairs_per_cpu_s(self) -> float:
        return self.pairs / self.cpu_s if self.cpu_s > 0 else float("nan")

    def per_request_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else float("nan")


def measure(server: ServerProcess, cost: Cost, requests: list[bytes], pairs: int, connections: int) -> None:
    """One closed-loop run of pre-encoded `requests`; add its service CPU to `cost`."""
    pid = server.process.pid
    before = batch_counters(server.url)
    cpu, loop = server.cpu_seconds(), thread_cpu_seconds(pid, pid)
    host, port = _host_port(server.url)
    result = run_closed_loop(host, port, requests, connections)
    spent, loop_spent = server.cpu_seconds() - cpu, thread_cpu_seconds(pid, pid) - loop
    after = batch_counters(server.url)
    cost.runs += after[0] - before[0]
    cost.padded_tokens += after[1] - before[1]
    cost.requests += len(requests)
    cost.pairs += pairs
    cost.cpu_s += spent
    cost.loop_cpu_s += loop_spent
    cost.errors += len(result.errors)
    cost.first_error = cost.first_error or (result.errors[0] if result.errors else None)
    cost.rounds.append(pairs / spent if spent > 0 else float("nan"))


def batch_counters(url: str) -> tuple[float, float]:
    """(onnxruntime runs, padded tokens they computed) so far, from the service's /metrics: how the
    batcher cut the load, which moves the per-pair engine cost whatever the request size."""
    text = httpx.get(url + "/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("rlhf_batch_pairs_count", "rlhf_batch_tokens_sum"):
            values[name] = float(value)
    return values["rlhf_batch_pairs_count"], values["rlhf_batch_tokens_sum"]


def run_rounds(
    server: ServerProcess, pairs: Sequence[tuple[str, str]], routes: Sequence[str], connections: int,
    rounds: int, sampled: Path | None = None,
) -> list[Cost]:  # fmt: skip
    """Each round: the 16-pair reference, then every route at one pair per request (sampled by py-spy
    into `sampled` when given)."""
    host, port = _host_port(server.url)

    def encoded(path: str, bodies: list[dict[str, Any]]) -> list[bytes]:
        return [encode_post(host, port, path, body) for body in bodies]

    reference = encoded("/score", requests_of(pairs, REFERENCE_PAIRS))
    singles = {
        route: encoded(f"/{route}", [PER_SAMPLE_BODIES[route](q, a) for q, a in pairs]) for route in routes
    }
    for requests in singles.values():  # warm-up: every route's code paths once
        run_closed_loop(host, port, requests[:32], 8)
    run_closed_loop(host, port, reference[:4], 4)
    costs = [Cost(REFERENCE), *(Cost(f"{route} x1") for route in routes)]
    for done in range(rounds):
        measure(server, costs[0], reference, len(pairs), REFERENCE_CONNECTIONS)
        with py_spy(server.process.pid, sampled, append=done > 0):
            for cost, requests in zip(costs[1:], singles.values(), strict=True):
                measure(server, cost, requests, len(pairs), connections)
        typer.echo(
            f"round {done + 1}/{rounds}: "
            + ", ".join(f"{c.name} {c.rounds[-1]:.1f} pairs/CPU-s" for c in costs),
            err=True,
        )
    return costs


@contextmanager
def py_spy(pid: int, out: Path | None, append: bool) -> Iterator[None]:
    """Sample `pid` with `py-spy record --gil` while the block runs, stacks appended to `out`."""
    if out is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    part = out.with_suffix(".part")
    command = [binary, "record", "--pid", str(pid), "--gil", "--format", "raw", "--rate", "250",
               "--nonblocking", "--output", str(part)]  # fmt: skip
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, error = sampler.communicate(timeout=60)
    if not part.exists():
        raise RuntimeError(
            f"py-spy wrote nothing ({command[0]} exit {sampler.returncode}): {error.decode()[-500:]}"
        )
    with out.open("a" if append else "w", encoding="utf-8") as handle:
        handle.write(part.read_text(encoding="utf-8"))
    part.unlink()


def hot_functions(stacks: Path, top: int) -> str:
    """The `top` functions of py-spy raw stacks by own samples and by samples with their callees."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in stacks.read_text(encoding="utf-8").splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        n = int(count)
        samples += n
        names = [_function(frame) for frame in frames.split(";")]
        own[names[-1]] += n
        for name in set(names):
            total[name] += n

    def listing(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / samples:6.2f}%  {name}" for name, n in counter.most_common(top)]

    return "\n".join(
        [f"{samples} samples holding the GIL; own samples:", *listing(own), "with callees:", *listing(total)]
    )


def _function(frame: str) -> str:
    """`name (path/to/file.py:LINE)` → `name (file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def report(costs: Sequence[Cost], connections: int) -> str:
    """A markdown table: pairs per CPU-second, its ratio to the reference, CPU per request and where."""
    base = costs[0]
    lines = [
        f"| load | requests | pairs/CPU-s | vs {REFERENCE} | per round | CPU ms/request | event-loop ms/request "
        "| other threads ms/pair | extra CPU ms/request | pairs/run | padded tokens/pair | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_per_pair = base.cpu_s / base.pairs if base.pairs else float("nan")
    for cost in costs:
        ratio = cost.pairs_per_cpu_s / base.pairs_per_cpu_s
        per_round = " / ".join(
            f"{mine / ref:.3f}" for mine, ref in zip(cost.rounds, base.rounds, strict=True)
        )
        other = 1000 * (cost.cpu_s - cost.loop_cpu_s) / cost.pairs if cost.pairs else float("nan")
        extra = (
            1000 * (cost.cpu_s - base_per_pair * cost.pairs) / cost.requests
            if cost.requests
            else float("nan")
        )
        label = cost.name if cost is base else f"{cost.name} ({connections} connections)"
        lines.append(
            f"| {label} | {cost.requests} | {cost.pairs_per_cpu_s:.1f} | {ratio:.3f} | {per_round} "
            f"| {cost.per_request_ms(cost.cpu_s):.2f} | {cost.per_request_ms(cost.loop_cpu_s):.2f} "
            f"| {other:.2f} | {extra:.2f} | {cost.pairs / cost.runs if cost.runs else float('nan'):.1f} "
            f"| {cost.padded_tokens / cost.pairs if cost.pairs else float('nan'):.0f} | {cost.errors} |"
        )
    return "\n".join(lines)


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def bench_request_cost_command(
    bundle: Annotated[Path, typer.Option(help="bundle directory")] = Path("bundles/rm-default"),
    precision: Annotated[str, typer.Option(help="auto | fp32 | int8")] = "auto",
    threads: Annotated[int, typer.Option(help="service onnxruntime intra-op threads")] = 2,
    pairs: Annotated[int, typer.Option(help="hh-rlhf pairs per measurement (= single-pair requests)")] = 512,
    connections: Annotated[int, typer.Option(help="connections of the single-pair load")] = 256,
    rounds: Annotated[int, typer.Option(help="rounds, each the reference then every route")] = 2,
    routes: Annotated[
        str, typer.Option(help=f"routes, comma-separated, of: {', '.join(PER_SAMPLE_BODIES)}")
    ] = "score,get_reward,classify",
    py_spy_out: Annotated[
        Path | None,
        typer.Option("--py-spy", help="sample the single-pair loads with py-spy, raw stacks written here"),
    ] = None,
    top: Annotated[int, typer.Option(help="functions listed from the py-spy samples")] = 40,
    max_chars: Annotated[
        int,
        typer.Option(
            help="cut each question to its last and each answer to its first N characters (0: whole "
            "pairs); short pairs make the per-request cost a large share, so changes to it show"
        ),
    ] = 0,
) -> None:
    """CPU the service spends per single-pair request, against 16-pair requests, in one run."""
    chosen = [r.strip().strip("/") for r in routes.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(PER_SAMPLE_BODIES))
    if unknown:
        raise typer.BadParameter(f"unknown routes {unknown}; known: {', '.join(PER_SAMPLE_BODIES)}")
    work = load_hh_pairs(embedded_pairs_path(), pairs, seed=0)
    if max_chars > 0:
        work = [(q[-max_chars:], a[:max_chars]) for q, a in work]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(bundle, precision, threads, port, max(4096, 2 * connections), {})
    if py_spy_out is not None:
        py_spy_out.parent.mkdir(parents=True, exist_ok=True)
    with running_server([sys.executable, "-m", "service"], url, env) as server:
        costs = run_rounds(server, work, chosen, connections, rounds, py_spy_out)
    typer.echo(report(costs, connections))
    if any(cost.errors for cost in costs):
        typer.echo("errors: " + "; ".join(f"{c.name}: {c.first_error}" for c in costs if c.errors), err=True)
    if py_spy_out is not None:
        typer.echo(hot_functions(py_spy_out, top))


if __name__ == "__main__":
    typer.run(bench_request_cost_command)
