"""A cheap closed-loop HTTP load generator: pre-encoded requests on raw asyncio streams, keep-alive.

    requests = [encode_post("127.0.0.1", port, "/score", body) for body in bodies]
    result = run_closed_loop("127.0.0.1", port, requests, connections=256)
    result.seconds, result.latencies, result.errors, result.cpu_seconds

Why not httpx here: with one pair per request the service's own cost per request is small, and a
Python HTTP client that builds and parses every request and response object costs as much CPU as the
service, on the same cores. That made single-pair load look slower than it is, and it measured the
client, not the service. This generator encodes every request once, before the clock starts, writes
the bytes and reads each response by its Content-Length, on uvloop when it is installed (uvicorn's
[standard] extra brings it), so its per-request work is a few syscalls and a header scan. Its own CPU
seconds are measured (`time.process_time` of this process, which runs nothing else meanwhile) and
reported beside the service's, so a reader sees what share of the machine the load itself took.

Each of ``connections`` connections sends its next request as soon as the previous response is in
(closed loop: the arrival pattern of a trainer's rollout workers, each waiting for its sample's
reward). A response that is not 200 counts as an error with its status and the start of its body; a
dropped connection counts as an error and is reopened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
HEADER_END = b"\r\n\r\n"


@dataclass
class LoadResult:
    seconds: float  # wall time from the first request written to the last response read
    latencies: list[float] = field(default_factory=list)  # per request, seconds
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # this process's CPU time over the run: what the load generation cost


def encode_post(host: str, port: int, path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """One complete HTTP/1.1 POST of ``body`` as JSON, keep-alive, ready to write."""
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server will close the connection) of one HTTP/1.1 response."""
    head = await reader.readuntil(HEADER_END)
    status_line, *header_lines = head[: -len(HEADER_END)].split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, closes = None, False
    for line in header_lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            closes = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by this load generator")
    if length is None:
        raise ValueError(f"HTTP {status} response without Content-Length")
    return status, await reader.readexactly(length), closes


async def closed_loop(host: str, port: int, requests: Sequence[bytes], connections: int) -> LoadResult:
    """Send every request, ``connections`` at a time, each connection one request after another."""
    pending = list(reversed(requests))
    result = LoadResult(0.0)

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while pending:
            request = pending.pop()
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(request)
                status, body, closes = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                result.errors.append(f"{type(err).__name__}: {err}")
                _close(writer)
                writer = None  # reopened for the next request
                continue
            result.latencies.append(time.perf_counter() - started)
            if status != 200:
                result.errors.append(f"HTTP {status}: {body[:300].decode(errors='replace')}")
            if closes:
                _close(writer)
                writer = None
        _close(writer)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(min(connections, len(requests)))))
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu
    return result


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def run(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop when it is installed (the cheaper event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine())


def run_closed_loop(host: str, port: int, requests: Sequence[bytes], connections: int) -> LoadResult:
    return run(lambda: closed_loop(host, port, requests, connections))
