"""Process faults: SIGTERM under load, and a policy run whose reward service restarts mid-run.

(Reward training killed with SIGKILL and resumed to identical weights is covered by
tests/training/test_resume.py::test_sigkill_then_resume_gives_identical_weights; not repeated here.)
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import AsyncRewardClient
from tests.reliability.figures import Figures
from tests.reliability.procserver import ServerProcess
from tests.reliability.workload import TOLERANCE, make_pairs, payload, scores_alone
from tests.service.conftest import dead_url
from training.policy.scoring import rm_answer, score_answers

IN_FLIGHT = 24
PAIRS_PER_REQUEST = 4


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_sigterm_under_load_finishes_in_flight_and_refuses_new(bundle_v1: Path, figures: Figures) -> None:
    scenario = figures.scenario("faults/sigterm")
    pool = make_pairs(IN_FLIGHT * PAIRS_PER_REQUEST, seed=3)
    expected = scores_alone(bundle_v1, pool)
    server = ServerProcess(bundle_v1, delay=0.1, max_batch_pairs=8, drain_seconds=20, batch_wait_ms=2)
    with server:
        total_pairs = IN_FLIGHT * PAIRS_PER_REQUEST
        results: dict[int, httpx.Response | Exception] = {}

        def send(i: int) -> None:
            idx = range(i * PAIRS_PER_REQUEST, (i + 1) * PAIRS_PER_REQUEST)
            try:
                results[i] = httpx.post(f"{server.url}/score", json=payload(pool, idx), timeout=60)
            except httpx.HTTPError as exc:
                results[i] = exc

        threads = [threading.Thread(target=send, args=(i,)) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        scenario.sent += IN_FLIGHT
        # every pair admitted (queued or already scored) before the signal: all of them are in flight
        deadline = time.monotonic() + 20
        while (
            _metric(server.url, "rlhf_queue_depth") + _metric(server.url, "rlhf_scored_pairs_total")
            < total_pairs
        ):
            assert time.monotonic() < deadline, "requests were not admitted"
            time.sleep(0.01)
        assert _metric(server.url, "rlhf_queue_depth") > 0, (
            "nothing left in flight: the signal would come too late"
        )
        server.terminate()
        scenario.faults += 1
        refused = {"503": 0, "connection refused": 0}
        while server.process is not None and server.process.poll() is None:  # new requests while draining
            scenario.sent += 1
            scenario.inputs += 1
            try:
                with httpx.Client(timeout=10) as fresh:  # a new connection each time, like a new client
                    response = fresh.post(f"{server.url}/score", json=payload(pool, [0]))
            except httpx.ConnectError:
                refused["connection refused"] += 1
                continue
            except httpx.HTTPError as exc:  # reset or cut mid-answer: half-answered
                scenario.lost += 1
                pytest.fail(f"a new request during the drain got {type(exc).__name__}: {exc}")
            if response.status_code != 503 or response.json()["error"]["type"] != "draining":
                scenario.lost += 1
                pytest.fail(
                    f"a new request during the drain got HTTP {response.status_code}: {response.text}"
                )
            refused["503"] += 1
            time.sleep(0.02)
        assert server.wait(timeout=30) == 0, server.stderr()
        for thread in threads:
            thread.join()
        scenario.sent += 1
        with pytest.raises(httpx.ConnectError):  # after exit: connection refused, not a hang
            httpx.post(f"{server.url}/score", json=payload(pool, [0]), timeout=5)
    for i in range(IN_FLIGHT):
        outcome = results[i]
        idx = list(range(i * PAIRS_PER_REQUEST, (i + 1) * PAIRS_PER_REQUEST))
        if not isinstance(outcome, httpx.Response) or outcome.status_code != 200:
            scenario.lost += 1
            continue
        if not np.allclose(outcome.json()["scores"], expected[idx], rtol=0, atol=TOLERANCE):
            scenario.lost += 1
    print(f"\nsigterm: {IN_FLIGHT} in flight all answered; new requests while draining: {refused}")
    assert refused["503"] > 0, "no request was seen being refused during the drain"
    scenario.assert_nothing_lost("faults/sigterm")


@pytest.mark.slow
def test_policy_rewards_survive_a_service_restart(bundle_v1: Path, figures: Figures) -> None:
    """The policy's scoring layer (training.policy.scoring over AsyncRewardClient) keeps asking while the
    service is SIGTERMed, then SIGKILLed, and restarted on the same port: rewards are retried until
    they arrive, and equal the scores computed alone; a reward that cannot be fetched is NaN, never 0."""
    scenario = figures.scenario("faults/policy-restart")
    port = int(dead_url().rsplit(":", 1)[1])
    groups = [(f"Human: question {g}? Assistant:", [f"answer {g}.{k}" for k in range(4)]) for g in range(16)]
    expected = [scores_alone(bundle_v1, [(q, rm_answer(a)) for a in answers]) for q, answers in groups]
    server = ServerProcess(bundle_v1, port=port).start()
    restarts: list[str] = []
    waits: list[float] = []  # seconds per group: a group asked during a restart waits for it

    def restart(kind: str) -> None:
        if kind == "sigterm":
            server.terminate()
        else:
            server.kill()
        server.wait(timeout=30)
        server.stop()
        time.sleep(0.3)
        restarts.append(kind)
        server.start()  # same port, same bundle

    async def run() -> list[np.ndarray]:
        client = AsyncRewardClient(server.url, max_retries=30, backoff_base=0.05, backoff_max=0.5, timeout=10)
        rewards = []
        try:
            for g, (question, answers) in enumerate(groups):
                if g in (4, 10):  # inject a restart between steps, while the loop keeps asking
                    kind = "sigterm" if g == 4 else "sigkill"
                    threading.Thread(target=restart, args=(kind,)).start()
                    scenario.faults += 1
                    await asyncio.sleep(0.05)
                scores = await score_answers(client, question, answers, "raw")
                scenario.sent += 1
                rewards.append(scores.rewards)
                waits.append(scores.seconds)
        finally:
            await client.close()
        return rewards

    try:
        rewards = asyncio.run(run())
        deadline = time.monotonic() + 60
        while len(restarts) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    assert restarts == ["sigterm", "sigkill"]
    assert sum(w > 0.5 for w in waits) >= 2, f"no request waited through a restart: {waits}"
    for got, want in zip(rewards, expected, strict=True):
        scenario.inputs += len(got)
        assert not np.any(got == 0.0), "a reward of 0 was invented for a failure"
        if not np.allclose(got, want, rtol=0, atol=TOLERANCE):
            scenario.lost += 1
            print(f"lost: got {got}, expected {want}")
    scenario.assert_nothing_lost("faults/policy-restart")


def test_policy_rewards_are_nan_when_the_service_stays_down(figures: Figures) -> None:
    """No retries left and nobody listening: every reward is NaN (masked by the trainer), never 0."""
    scenario = figures.scenario("faults/policy-down")

    async def run() -> np.ndarray:
        client = AsyncRewardClient(dead_url(), max_retries=1, backoff_base=0.01, timeout=2)
        try:
            scores = await score_answers(client, "Human: hi? Assistant:", ["a", "b", "c"], "raw")
        finally:
            await client.close()
        assert scores.failed == 3 and scores.errors
        return scores.rewards

    scenario.faults += 1
    scenario.sent += 2  # first try + one retry (each refused: the caller is told, nothing is lost)
    rewards = asyncio.run(run())
    assert np.isnan(rewards).all() and not np.any(rewards == 0.0)
