"""Python client of the scoring service, sync and async, on httpx.

    with RewardClient(["http://rm-0:8000", "http://rm-1:8000"], api_key="s3cret") as client:
        result = client.score([("How do I bake bread?", "Mix flour, water, yeast...")])
        result.scores          # float64 [n], NaN where an item could not be scored (never 0)
        result.model_changed   # True once the service answered with another model version

Long lists are cut into chunks of `chunk_size`, sent `max_concurrency` at a time, round-robin over the
base URLs. Only transient failures are retried (timeouts, connection errors, 429, 502, 503, 504), with
jittered exponential backoff that honours Retry-After; a connection error or 503 moves the chunk to the
next URL. Other 4xx mean the caller sent something wrong and raise :class:`RequestRejected` at once.

Error tree::

    RewardClientError
     ├── RewardUnavailable   gave up after retries (only with raise_on_failure=True, and models())
     └── RequestRejected     401 / 413 / 422 / other 4xx: a caller bug, never retried, never masked
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import numpy as np

RETRY_STATUS = frozenset({429, 502, 503, 504})
MOVE_STATUS = frozenset({503})  # a draining/unready replica: try the next URL


class RewardClientError(Exception):
    """Base of the client's errors."""


class RewardUnavailable(RewardClientError):
    """The service could not be reached or kept refusing after all retries."""


class RequestRejected(RewardClientError):
    """The service refused the request as malformed or unauthorised; retrying would not help."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"HTTP {status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message


@dataclass
class ScoreResult:
    scores: np.ndarray  # float64 [n]; NaN where the item could not be scored (never 0)
    normalized: np.ndarray  # float64 [n]; NaN likewise
    truncated: np.ndarray  # bool [n]
    model_version: str | None  # version that scored the batch (None if nothing was scored)
    model_name: str | None
    failed: int  # items that are NaN
    errors: list[str] = field(default_factory=list)  # one message per failed chunk
    model_changed: bool = False  # True if the version differs from the first version this client saw


@dataclass
class _Chunk:
    start: int
    size: int
    payload: dict[str, Any]
    url_index: int


@dataclass
class _Outcome:
    chunk: _Chunk
    body: dict[str, Any] | None = None
    error: str | None = None


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(type, message) from the service's JSON error body, or the raw text."""
    try:
        error = response.json()["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


def _parsed(chunk: _Chunk, url: str, response: httpx.Response) -> _Outcome:
    try:
        body = response.json()
    except ValueError:
        return _Outcome(chunk, error=f"{url}: HTTP 200 with a body that is not JSON")
    if not isinstance(body, dict):
        return _Outcome(chunk, error=f"{url}: HTTP 200 with a JSON {type(body).__name__}, expected an object")
    return _Outcome(chunk, body=body)


class _ClientBase:
    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        chunk_size: int = 64,
        max_concurrency: int = 4,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls must name at least one service URL")
        if chunk_size < 1 or max_concurrency < 1 or max_retries < 0:
            raise ValueError("chunk_size and max_concurrency must be >= 1, max_retries >= 0")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.first_version: str | None = None
        self._round_robin = itertools.count()
        self._rr_lock = threading.Lock()

    def _next_url_index(self) -> int:
        with self._rr_lock:
            return next(self._round_robin)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Jittered exponential backoff; never shorter than the server's Retry-After (capped)."""
        expo = min(self.backoff_max, self.backoff_base * 2**attempt)
        jittered = random.uniform(expo / 2, expo)
        return min(self.backoff_max, max(jittered, retry_after or 0.0))

    def _chunks(self, items: int, make_payload: Any) -> list[_Chunk]:
        return [
            _Chunk(
                start,
                min(self.chunk_size, items - start),
                make_payload(start, start + self.chunk_size),
                self._next_url_index(),
            )
            for start in range(0, items, self.chunk_size)
        ]

    def _judge(self, url: str, response: httpx.Response) -> tuple[str, float | None, str]:
        """('ok'|'retry'|'move'|'fail', retry_after, message); raises RequestRejected for other 4xx."""
        if response.status_code == 200:
            return "ok", None, ""
        kind, message = _error_of(response)
        text = f"{url}: HTTP {response.status_code} {kind}: {message}"
        if response.status_code in RETRY_STATUS:
            verdict = "move" if response.status_code in MOVE_STATUS else "retry"
            return verdict, _retry_after(response), text
        if 400 <= response.status_code < 500:
            raise RequestRejected(response.status_code, kind, message)
        return "fail", None, text

    def _assemble(self, n: int, outcomes: Sequence[_Outcome]) -> ScoreResult:
        scores = np.full(n, np.nan)
        normalized = np.full(n, np.nan)
        truncated = np.zeros(n, dtype=bool)
        errors: list[str] = []
        versions: list[tuple[str, str]] = []
        for outcome in sorted(outcomes, key=lambda o: o.chunk.start):
            rows = slice(outcome.chunk.start, outcome.chunk.start + outcome.chunk.size)
            if outcome.body is None:
                errors.append(f"items {rows.start}..{rows.stop - 1}: {outcome.error}")
                continue
            try:
                body = outcome.body
                got = np.asarray(body["scores"], dtype=np.float64)
                if got.shape != (outcome.chunk.size,):
                    raise ValueError(
                        f"{got.shape[0] if got.ndim else 0} scores for {outcome.chunk.size} items"
                    )
                scores[rows] = got
                normalized[rows] = np.asarray(body["normalized"], dtype=np.float64)
                truncated[rows] = np.asarray(body["truncated"], dtype=bool)
                versions.append((str(body["model"]["name"]), str(body["model"]["version"])))
            except (KeyError, TypeError, ValueError) as exc:
                scores[rows] = np.nan
                normalized[rows] = np.nan
                errors.append(f"items {rows.start}..{rows.stop - 1}: malformed response ({exc})")
        if versions and self.first_version is None:
            self.first_version = versions[0][1]
        changed = any(version != self.first_version for _, version in versions)
        name, version = versions[-1] if versions else (None, None)
        failed = int(np.isnan(scores).sum())
        return ScoreResult(scores, normalized, truncated, version, name, failed, errors, changed)

    def _score_chunks(self, pairs: Sequence[tuple[str, str]]) -> list[_Chunk]:
        def payload(a: int, b: int) -> dict[str, Any]:
            return {"pairs": [{"question": q, "answer": r} for q, r in pairs[a:b]]}

        return self._chunks(len(pairs), payload)

    def _reward_chunks(self, queries: Sequence[str], prompts: Sequence[str]) -> list[_Chunk]:
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")

        def payload(a: int, b: int) -> dict[str, Any]:
            return {"query": list(queries[a:b]), "prompts": list(prompts[a:b])}

        return self._chunks(len(queries), payload)

    @staticmethod
    def _raise_if_failed(result: ScoreResult, raise_on_failure: bool) -> ScoreResult:
        if raise_on_failure and result.failed:
            raise RewardUnavailable(
                f"{result.failed} item(s) could not be scored: {'; '.join(result.errors)}"
            )
        return result


class RewardClient(_ClientBase):
    """Synchronous client; chunks run concurrently on a small thread pool."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        chunk_size: int = 64,
        max_concurrency: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_urls, api_key=api_key, timeout=timeout, max_retries=max_retries, backoff_base=backoff_base,
            backoff_max=backoff_max, chunk_size=chunk_size, max_concurrency=max_concurrency,
        )  # fmt: skip
        limits = httpx.Limits(max_connections=max_concurrency * len(self.base_urls) + 2)
        self._http = httpx.Client(timeout=timeout, transport=transport, limits=limits, headers=self.headers)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="reward-client")
        self._abort = threading.Event()

    def score(self, pairs: Sequence[tuple[str, str]], *, raise_on_failure: bool = False) -> ScoreResult:
        """Scores of (question, answer) pairs in input order."""
        return self._raise_if_failed(
            self._run("/score", len(pairs), self._score_chunks(pairs)), raise_on_failure
        )

    def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str], *, raise_on_failure: bool = False
    ) -> ScoreResult:
        """OpenRLHF-style: each query is prompt + response."""
        chunks = self._reward_chunks(queries, prompts)
        return self._raise_if_failed(self._run("/get_reward", len(queries), chunks), raise_on_failure)

    def models(self) -> dict[str, Any]:
        outcome = self._send("GET", "/v1/models", None, self._next_url_index())
        if outcome.body is None:
            raise RewardUnavailable(f"GET /v1/models failed: {outcome.error}")
        return outcome.body

    def _run(self, path: str, n: int, chunks: list[_Chunk]) -> ScoreResult:
        self._abort.clear()
        if len(chunks) <= 1:
            outcomes = [self._post(path, c) for c in chunks]
        else:
            futures = [self._pool.submit(self._post, path, c) for c in chunks]
            try:
                outcomes = [f.result() for f in futures]
            except RequestRejected:
                self._abort.set()  # stop the other chunks from retrying; the caller must fix the request
                for f in futures:
                    f.cancel()
                raise
        return self._assemble(n, outcomes)

    def _post(self, path: str, chunk: _Chunk) -> _Outcome:
        outcome = self._send("POST", path, chunk.payload, chunk.url_index)
        outcome.chunk = chunk
        return outcome

    def _send(self, method: str, path: str, payload: dict[str, Any] | None, url_index: int) -> _Outcome:
        placeholder = _Chunk(0, 0, {}, url_index)
        last = "not attempted"
        for attempt in range(self.max_retries + 1):
            if self._abort.is_set():
                return _Outcome(placeholder, error="aborted: another chunk was rejected")
            url = self.base_urls[url_index % len(self.base_urls)]
            retry_after: float | None = None
            try:
                response = self._http.request(method, url + path, json=payload)
            except httpx.TimeoutException as exc:
                last = f"{url}: timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"{url}: connection error ({type(exc).__name__}: {exc})"
                url_index += 1
            else:
                verdict, retry_after, last = self._judge(url, response)
                if verdict == "ok":
                    return _parsed(placeholder, url, response)
                if verdict == "fail":
                    return _Outcome(placeholder, error=last)
                if verdict == "move":
                    url_index += 1
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        return _Outcome(placeholder, error=f"gave up after {self.max_retries + 1} attempts; last: {last}")

    def close(self) -> None:
        self._abort.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRewardClient(_ClientBase):
    """Asynchronous client: same constructor and methods, awaitable; concurrency via a semaphore."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        chunk_size: int = 64,
        max_concurrency: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_urls, api_key=api_key, timeout=timeout, max_retries=max_retries, backoff_base=backoff_base,
            backoff_max=backoff_max, chunk_size=chunk_size, max_concurrency=max_concurrency,
        )  # fmt: skip
        limits = httpx.Limits(max_connections=max_concurrency * len(self.base_urls) + 2)
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, limits=limits, headers=self.headers
        )
        self._semaphore: asyncio.Semaphore | None = None

    async def score(self, pairs: Sequence[tuple[str, str]], *, raise_on_failure: bool = False) -> ScoreResult:
        result = await self._run("/score", len(pairs), self._score_chunks(pairs))
        return self._raise_if_failed(result, raise_on_failure)

    async def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str], *, raise_on_failure: bool = False
    ) -> ScoreResult:
        chunks = self._reward_chunks(queries, prompts)
        return self._raise_if_failed(await self._run("/get_reward", len(queries), chunks), raise_on_failure)

    async def models(self) -> dict[str, Any]:
        outcome = await self._send("GET", "/v1/models", None, self._next_url_index())
        if outcome.body is None:
            raise RewardUnavailable(f"GET /v1/models failed: {outcome.error}")
        return outcome.body

    async def _run(self, path: str, n: int, chunks: list[_Chunk]) -> ScoreResult:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        tasks = [asyncio.ensure_future(self._post(path, c)) for c in chunks]
        try:
            outcomes = await asyncio.gather(*tasks)
        except RequestRejected:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self._assemble(n, outcomes)

    async def _post(self, path: str, chunk: _Chunk) -> _Outcome:
        assert self._semaphore is not None
        async with self._semaphore:
            outcome = await self._send("POST", path, chunk.payload, chunk.url_index)
        outcome.chunk = chunk
        return outcome

    async def _send(self, method: str, path: str, payload: dict[str, Any] | None, url_index: int) -> _Outcome:
        placeholder = _Chunk(0, 0, {}, url_index)
        last = "not attempted"
        for attempt in range(self.max_retries + 1):
            url = self.base_urls[url_index % len(self.base_urls)]
            retry_after: float | None = None
            try:
                response = await self._http.request(method, url + path, json=payload)
            except httpx.TimeoutException as exc:
                last = f"{url}: timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"{url}: connection error ({type(exc).__name__}: {exc})"
                url_index += 1
            else:
                verdict, retry_after, last = self._judge(url, response)
                if verdict == "ok":
                    return _parsed(placeholder, url, response)
                if verdict == "fail":
                    return _Outcome(placeholder, error=last)
                if verdict == "move":
                    url_index += 1
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        return _Outcome(placeholder, error=f"gave up after {self.max_retries + 1} attempts; last: {last}")

    async def close(self) -> None:
        await self._http.aclose()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
