"""Bounded load on loopback against a server process: saturate, overload at 2x, recover.

The server runs with a small queue (32 pairs) and every onnxruntime run delayed by 20 ms, so its
capacity is a known ~8 pairs / 20 ms however busy the cores are, and 2x that rate is reachable from
a Python load generator. Phases (fixed durations, fixed request counts):
1. saturation: closed loop, as many concurrent requests as the queue holds -> measured rate R;
2. overload: open loop at 2R for 3 s -> only 200 and 429 (with Retry-After), every 200 carries exactly
   its own scores in order, goodput stays near R, the server's RSS stays bounded;
3. recovery: the closed loop again -> no 429, throughput back to ~R.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.figures import Figures, Scenario
from tests.reliability.procserver import ServerProcess
from tests.reliability.workload import TOLERANCE, make_pairs, payload, scores_alone

QUEUE_PAIRS = 32
PAIRS_PER_REQUEST = 4
DELAY_S = 0.02
CLOSED_WORKERS = QUEUE_PAIRS // PAIRS_PER_REQUEST  # never more in flight than the queue admits
PHASE_S = 2.0
OVERLOAD_S = 3.0
RSS_BOUND = 64 * 1024 * 1024  # growth allowed over the warmed-up server (a leak grows without bound)


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, str]]:
    return make_pairs(96, seed=7)


@pytest.fixture(scope="module")
def server(bundle_v1: Path) -> Iterator[ServerProcess]:
    settings = dict(
        max_queue_pairs=QUEUE_PAIRS, max_batch_pairs=8, max_pairs_per_request=8, batch_wait_ms=2,
        retry_after_seconds=1,
    )  # fmt: skip
    with ServerProcess(bundle_v1, delay=DELAY_S, **settings) as process:
        yield process


async def _one(
    client: httpx.AsyncClient, rng: np.random.Generator, pool: list[tuple[str, str]], expected: np.ndarray,
    tally: Tally, scenario: Scenario,
) -> None:  # fmt: skip
    idx = rng.choice(len(pool), size=PAIRS_PER_REQUEST, replace=False).tolist()
    scenario.sent += 1
    try:
        response = await client.post("/score", json=payload(pool, idx))
    except httpx.HTTPError as exc:
        scenario.lost += 1
        tally.problems.append(f"{type(exc).__name__}: {exc}")
        return
    tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
    if response.status_code == 200:
        got = np.array(response.json()["scores"])
        if got.shape != (PAIRS_PER_REQUEST,) or not np.allclose(got, expected[idx], rtol=0, atol=TOLERANCE):
            scenario.lost += 1
            tally.problems.append(f"wrong scores: {got} != {expected[idx]}")
        tally.ok += 1
    elif response.status_code == 429:
        tally.refused += 1
        retry_after = response.headers.get("retry-after", "")
        if not retry_after.isdigit() or response.json()["error"]["type"] != "overloaded":
            tally.problems.append(
                f"429 without Retry-After or error body: {response.headers} {response.text}"
            )
    else:
        scenario.lost += 1
        tally.problems.append(f"HTTP {response.status_code}: {response.text[:200]}")


async def closed_loop(url: str, pool: list[tuple[str, str]], expected: np.ndarray, seconds: float,
                      scenario: Scenario) -> tuple[Tally, float]:  # fmt: skip
    tally = Tally()
    rng = np.random.default_rng(1)
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await _one(client, rng, pool, expected, tally, scenario)

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CLOSED_WORKERS)))
    return tally, tally.ok / (time.monotonic() - start)


async def open_loop(url: str, pool: list[tuple[str, str]], expected: np.ndarray, rate: float, seconds: float,
                    scenario: Scenario) -> tuple[Tally, float]:  # fmt: skip
    """Requests at fixed times (i / rate), whatever the answers: the load does not back off."""
    tally = Tally()
    rng = np.random.default_rng(2)
    count = int(rate * seconds)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(_one(client, rng, pool, expected, tally, scenario)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    return tally, tally.ok / elapsed


@pytest.mark.slow
def test_overload_at_twice_saturation(
    server: ServerProcess, pool: list[tuple[str, str]], bundle_v1: Path, figures: Figures
) -> None:
    scenario = figures.scenario("load")
    expected = scores_alone(bundle_v1, pool)
    rss: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            rss.append(server.rss_bytes())
            time.sleep(0.05)

    # 1. saturation (also the warm-up: allocator pools and onnxruntime arenas reach their working size)
    saturated, rate = asyncio.run(closed_loop(server.url, pool, expected, PHASE_S, scenario))
    assert not saturated.problems, saturated.problems[:5]
    assert rate > 5, f"saturation rate {rate:.1f} req/s is implausibly low"
    baseline = server.rss_bytes()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # 2. overload at twice the measured rate
        overload, goodput = asyncio.run(open_loop(server.url, pool, expected, 2 * rate, OVERLOAD_S, scenario))
        # 3. recovery
        recovered, rate_after = asyncio.run(closed_loop(server.url, pool, expected, PHASE_S, scenario))
    finally:
        sampling.set()
        sampler.join()
    scenario.inputs += overload.ok + overload.refused + saturated.ok + recovered.ok
    print(
        f"\nload: saturation {rate:.1f} req/s; overload at {2 * rate:.1f} req/s -> {overload.statuses}, "
        f"goodput {goodput:.1f} req/s; recovery {rate_after:.1f} req/s {recovered.statuses}; "
        f"RSS {baseline / 2**20:.0f} MiB -> peak {max(rss) / 2**20:.0f} MiB"
    )
    assert not overload.problems, overload.problems[:5]
    assert set(overload.statuses) <= {200, 429}
    assert overload.refused > 0.1 * (overload.ok + overload.refused), (
        f"2x did not saturate: {overload.statuses}"
    )
    assert overload.ok > 0 and goodput > 0.5 * rate, "the server stopped doing useful work under overload"
    assert max(rss) - baseline < RSS_BOUND, f"RSS grew {(max(rss) - baseline) / 2**20:.0f} MiB under overload"
    assert not recovered.problems and set(recovered.statuses) == {200}, recovered.statuses
    assert rate_after > 0.75 * rate, f"throughput did not recover: {rate_after:.1f} vs {rate:.1f} req/s"
    scenario.assert_nothing_lost("load")
