"""service.client against real servers: the scoring service itself, and small scripted apps that
answer 429/503/4xx/500 or stall, to pin down what is retried, what is raised and what becomes NaN."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.app import create_app
from service.client import AsyncRewardClient, RequestRejected, RewardClient, RewardUnavailable
from service.client._core import AbortFlag, Send, Sleep
from tests.service.conftest import LiveServer, PlainServer, dead_url, settings_for, slow_factory

PAIRS = [(f"question {i}", "answer " * (i % 7) + str(i)) for i in range(150)]


def scripted_app(
    script: list[int], hits: list[float], delay_first: float = 0.0, version: str = "1"
) -> FastAPI:
    """Answers request k with status script[k] (200 after the script ends); scores = len(answer)."""
    app = FastAPI()

    async def answer(request: Request, key: str, name: str) -> Any:
        body = await request.json()
        k = len(hits)
        hits.append(time.monotonic())
        if k == 0 and delay_first:
            await asyncio.sleep(delay_first)
        status = script[k] if k < len(script) else 200
        if status != 200:
            headers = {"Retry-After": "0"} if status == 429 else {}
            return JSONResponse(
                {"error": {"type": "scripted", "message": f"status {status}"}}, status, headers
            )
        items = body[key]
        scores = [float(len(item[name] if name else item)) for item in items]
        scores_key = "scores" if key == "pairs" else "rewards"  # /get_reward: OpenRLHF's names
        return {scores_key: scores, "normalized": [s / 10 for s in scores], "truncated": [False] * len(items),
                "model": {"name": "fake", "version": version}}  # fmt: skip

    @app.post("/score")
    async def score(request: Request) -> Any:
        return await answer(request, "pairs", "answer")

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Any:
        return await answer(request, "query", "")

    return app


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[float]]]:
    hits: list[float] = []
    script, delay = request.param if isinstance(request.param, tuple) else (request.param, 0.0)
    with PlainServer(scripted_app(script, hits, delay)) as server:
        yield server.url, hits


def fast(urls: str | list[str], **kw: Any) -> RewardClient:
    return RewardClient(urls, backoff_base=0.01, backoff_max=0.05, **kw)


def test_scores_match_the_service_in_order_across_chunks(shared_live: LiveServer) -> None:
    direct = httpx.post(
        f"{shared_live.url}/score", json={"pairs": [{"question": q, "answer": a} for q, a in PAIRS]}
    ).json()
    with RewardClient(shared_live.url, chunk_size=16, max_concurrency=4) as client:
        result = client.score(PAIRS)
        assert result.scores.dtype == np.float64 and result.scores.shape == (150,)
        np.testing.assert_allclose(result.scores, direct["scores"], atol=1e-4)
        np.testing.assert_allclose(result.normalized, direct["normalized"], atol=1e-4)
        assert result.failed == 0 and result.errors == [] and not result.model_changed
        assert (result.model_name, result.model_version) == ("tiny-rm", "1")
        rewards = client.get_reward(["How do I bake bread? Knead it."], ["How do I bake bread?"])
        assert rewards.failed == 0 and np.isfinite(rewards.scores).all()
        assert client.models()["data"][0]["version"] == "1"
        assert client.score([]).scores.shape == (0,)


def test_model_changed_after_a_reload(bundle_root: Path) -> None:
    with (
        LiveServer(create_app(settings_for(bundle_root / "rm-v1"))) as server,
        RewardClient(server.url) as client,
    ):
        assert not client.score(PAIRS[:3]).model_changed
        assert httpx.post(f"{server.url}/admin/reload", json={"bundle": "rm-v2"}).status_code == 200
        after = client.score(PAIRS[:3])
        assert after.model_changed and after.model_version == "2"


def test_429_from_a_full_real_queue_is_retried_until_everything_is_scored(bundle_v1: Path) -> None:
    settings = settings_for(bundle_v1, max_queue_pairs=8, max_pairs_per_request=8)
    with LiveServer(create_app(settings, backend_factory=slow_factory(0.03))) as server:
        with fast(server.url, chunk_size=8, max_concurrency=4, max_retries=50) as client:
            result = client.score(PAIRS[:96])
        text = httpx.get(f"{server.url}/metrics").text
    assert result.failed == 0 and np.isfinite(result.scores).all()
    assert 'rlhf_rejected_total{reason="queue_full"} 0.0' not in text  # some chunks really were refused


@pytest.mark.parametrize("scripted", [[429, 503, 502, 504]], indirect=True)
def test_transient_statuses_are_retried_then_recover(scripted: tuple[str, list[float]]) -> None:
    url, hits = scripted
    with fast(url, max_retries=4) as client:
        result = client.score(PAIRS[:5])
    assert len(hits) == 5 and result.failed == 0
    assert result.scores.tolist() == [float(len(a)) for _, a in PAIRS[:5]]


@pytest.mark.parametrize("scripted", [[429] * 10], indirect=True)
def test_giving_up_gives_nan_never_zero(scripted: tuple[str, list[float]]) -> None:
    url, hits = scripted
    with fast(url, max_retries=2) as client:
        result = client.score(PAIRS[:4])
        assert len(hits) == 3
        assert np.isnan(result.scores).all() and np.isnan(result.normalized).all()
        assert result.failed == 4 and len(result.errors) == 1 and "gave up after 3" in result.errors[0]
        assert result.model_version is None
        with pytest.raises(RewardUnavailable):
            client.score(PAIRS[:4], raise_on_failure=True)


@pytest.mark.parametrize("scripted", [[422], [401], [413], [404]], indirect=True)
def test_other_4xx_are_raised_and_never_retried(scripted: tuple[str, list[float]]) -> None:
    url, hits = scripted
    with fast(url) as client, pytest.raises(RequestRejected) as rejected:
        client.score(PAIRS[:3])
    assert len(hits) == 1 and rejected.value.status in (401, 404, 413, 422)
    assert rejected.value.kind == "scripted"


@pytest.mark.parametrize("scripted", [[500]], indirect=True)
def test_500_is_not_retried_and_masks_only_its_chunk(scripted: tuple[str, list[float]]) -> None:
    url, hits = scripted
    with fast(url, chunk_size=2, max_concurrency=1) as client:
        result = client.score(PAIRS[:6])
    assert len(hits) == 3
    assert np.isnan(result.scores[:2]).all() and np.isfinite(result.scores[2:]).all()
    assert result.failed == 2 and "HTTP 500" in result.errors[0]


@pytest.mark.parametrize("scripted", [([], 1.0)], indirect=True)
def test_timeouts_are_retried(scripted: tuple[str, list[float]]) -> None:
    url, hits = scripted
    with fast(url, timeout=0.3) as client:
        result = client.score(PAIRS[:2])
    assert result.failed == 0 and len(hits) == 2


def test_retry_after_is_honoured() -> None:
    hits: list[float] = []
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> Any:
        hits.append(time.monotonic())
        if len(hits) == 1:
            return JSONResponse(
                {"error": {"type": "overloaded", "message": "full"}}, 429, {"Retry-After": "1"}
            )
        n = len((await request.json())["pairs"])
        return {"scores": [1.0] * n, "normalized": [0.0] * n, "truncated": [False] * n,
                "model": {"name": "m", "version": "1"}}  # fmt: skip

    with PlainServer(app) as server, RewardClient(server.url, backoff_base=0.01, backoff_max=5) as client:
        assert client.score(PAIRS[:1]).failed == 0
    assert hits[1] - hits[0] >= 0.95


def test_chunks_spread_round_robin_over_urls() -> None:
    hits_a: list[float] = []
    hits_b: list[float] = []
    with PlainServer(scripted_app([], hits_a)) as a, PlainServer(scripted_app([], hits_b)) as b:
        with fast([a.url, b.url], chunk_size=10) as client:
            result = client.score(PAIRS[:80])
        assert result.failed == 0 and len(hits_a) == 4 and len(hits_b) == 4
        assert result.scores.tolist() == [float(len(x)) for _, x in PAIRS[:80]]


def test_connection_errors_move_the_chunk_to_another_url() -> None:
    hits: list[float] = []
    with PlainServer(scripted_app([], hits)) as alive, fast([dead_url(), alive.url], chunk_size=5) as client:
        result = client.score(PAIRS[:40])
    assert result.failed == 0 and len(hits) == 8


def test_async_client_matches_and_spreads(shared_live: LiveServer) -> None:
    hits_a: list[float] = []
    hits_b: list[float] = []

    async def main(urls: list[str]) -> None:
        async with AsyncRewardClient(shared_live.url, chunk_size=16, max_concurrency=3) as client:
            real = await client.score(PAIRS)
            assert real.failed == 0 and real.model_version == "1"
            sync = RewardClient(shared_live.url).score(PAIRS)
            np.testing.assert_allclose(real.scores, sync.scores, atol=1e-4)
            assert (await client.models())["data"][0]["name"] == "tiny-rm"
            reward = await client.get_reward(["prompt answer"], ["prompt"])
            assert reward.failed == 0
        async with AsyncRewardClient([dead_url(), *urls], chunk_size=10, backoff_base=0.01) as client:
            spread = await client.score(PAIRS[:90])
            assert spread.failed == 0
            assert spread.scores.tolist() == [float(len(x)) for _, x in PAIRS[:90]]

    with PlainServer(scripted_app([], hits_a)) as a, PlainServer(scripted_app([], hits_b)) as b:
        asyncio.run(main([a.url, b.url]))
    assert len(hits_a) + len(hits_b) == 9 and min(len(hits_a), len(hits_b)) >= 3


def test_async_client_retries_and_rejects() -> None:
    hits: list[float] = []
    rejected_hits: list[float] = []

    async def main(url: str, bad_url: str) -> None:
        async with AsyncRewardClient(url, backoff_base=0.01, backoff_max=0.05) as client:
            result = await client.score(PAIRS[:3])
            assert result.failed == 0 and len(hits) == 3
        async with AsyncRewardClient(bad_url, backoff_base=0.01) as client:
            with pytest.raises(RequestRejected):
                await client.score(PAIRS[:3])
        assert len(rejected_hits) == 1

    with (
        PlainServer(scripted_app([503, 429], hits)) as ok,
        PlainServer(scripted_app([422], rejected_hits)) as bad,
    ):
        asyncio.run(main(ok.url, bad.url))


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        RewardClient([])
    with pytest.raises(ValueError):
        RewardClient("http://x", chunk_size=0)


def rejecting_app(hits: list[float]) -> FastAPI:
    """Refuses the chunk that starts at item 0 (422); every other chunk is told to retry (429) forever."""
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request) -> Any:
        hits.append(time.monotonic())
        first = (await request.json())["pairs"][0]["question"]
        if first == PAIRS[0][0]:
            await asyncio.sleep(0.1)  # the siblings are retrying by the time this one is refused
            return JSONResponse({"error": {"type": "validation_failed", "message": "bad"}}, 422)
        return JSONResponse({"error": {"type": "overloaded", "message": "full"}}, 429, {"Retry-After": "0"})

    return app


def _quiet_after(hits: list[float], seconds: float = 0.5) -> int:
    """Requests that arrive during `seconds`, once those already in flight when the call returned landed."""
    time.sleep(0.2)
    before = len(hits)
    time.sleep(seconds)
    return len(hits) - before


def test_a_rejected_chunk_stops_its_siblings_sync() -> None:
    hits: list[float] = []
    with PlainServer(rejecting_app(hits)) as server:
        client = fast(server.url, chunk_size=2, max_concurrency=3, max_retries=1000)
        with pytest.raises(RequestRejected):
            client.score(PAIRS[:6])
        assert _quiet_after(hits) == 0
        client.close()


def test_a_rejected_chunk_stops_its_siblings_async() -> None:
    hits: list[float] = []

    async def main(url: str) -> None:
        async with AsyncRewardClient(
            url, chunk_size=2, max_concurrency=3, max_retries=1000, backoff_base=0.01, backoff_max=0.05
        ) as client:
            with pytest.raises(RequestRejected):
                await client.score(PAIRS[:6])
            await asyncio.sleep(0.2)  # requests already in flight land
            count = len(hits)
            await asyncio.sleep(0.5)
            assert len(hits) == count

    with PlainServer(rejecting_app(hits)) as server:
        asyncio.run(main(server.url))


class _CloseOnThirdRequest(httpx.BaseTransport):
    """Answers 429 to every request and closes the client during the third one."""

    def __init__(self) -> None:
        self.client: RewardClient | None = None
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests == 3 and self.client is not None:
            self.client.close()
        return httpx.Response(429, json={"error": {"type": "overloaded", "message": "full"}})


def test_closing_a_client_stops_calls_still_retrying() -> None:
    transport = _CloseOnThirdRequest()
    client = RewardClient("http://rm", transport=transport, max_retries=100, backoff_base=0.001)
    transport.client = client
    result = client.score(PAIRS[:2])
    assert transport.requests == 3
    assert result.failed == 2 and result.errors == ["items 0..1: aborted: the client was closed"]


def _run_plan(client: RewardClient, replies: list[Any]) -> tuple[list[Any], Any]:
    """Drive the shared send loop by hand: the steps it asked for, and the outcome it returned."""
    plan = client._attempts("POST", "/score", {"pairs": []}, 0, AbortFlag())
    steps, reply = [], None
    try:
        while True:
            step = plan.send(reply)
            steps.append(step)
            reply = replies.pop(0) if isinstance(step, Send) else None
    except StopIteration as done:
        return steps, done.value


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": "t", "message": "m"}}, headers=headers)


def test_send_loop_moves_on_connection_errors_and_503_and_retries_429_in_place() -> None:
    client = RewardClient(["http://a", "http://b"], max_retries=3, backoff_base=0.01, backoff_max=5)
    ok = httpx.Response(200, json={"scores": []})
    refused = httpx.ConnectError("refused")
    steps, outcome = _run_plan(client, [refused, _response(503), _response(429, **{"Retry-After": "2"}), ok])
    sends = [s.url for s in steps if isinstance(s, Send)]
    assert sends == ["http://a/score", "http://b/score", "http://a/score", "http://a/score"]
    sleeps = [s.seconds for s in steps if isinstance(s, Sleep)]
    assert len(sleeps) == 3 and sleeps[2] == 2.0  # Retry-After is honoured (under backoff_max)
    assert outcome.body == {"scores": []}


def test_send_loop_gives_up_and_never_sleeps_after_the_last_attempt() -> None:
    client = RewardClient("http://a", max_retries=2, backoff_base=0.01)
    steps, outcome = _run_plan(client, [httpx.ReadTimeout("slow")] * 3)
    assert [type(s).__name__ for s in steps] == ["Send", "Sleep", "Send", "Sleep", "Send"]
    assert outcome.error == "gave up after 3 attempts; last: http://a: timeout (ReadTimeout)"


def test_send_loop_stops_when_aborted() -> None:
    client = RewardClient("http://a", max_retries=5)
    abort = AbortFlag()
    plan = client._attempts("POST", "/score", None, 0, abort)
    assert isinstance(next(plan), Send)
    abort.set("another chunk was rejected")
    assert isinstance(plan.send(_response(429)), Sleep)
    with pytest.raises(StopIteration) as done:
        plan.send(None)
    assert done.value.value.error == "aborted: another chunk was rejected"
