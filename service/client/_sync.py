"""The synchronous face: httpx.Client, chunks run concurrently on a small thread pool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import httpx

from service.client._core import AbortFlag, Chunk, ClientCore, Outcome, Reply, ScoreItem, ScoreResult, Sleep
from service.client._errors import RequestRejected


class RewardClient(ClientCore):
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
        self._http = httpx.Client(
            timeout=timeout, transport=transport, limits=self._limits(), headers=self.headers
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="reward-client")

    def score(self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False) -> ScoreResult:
        """Scores of (question, answer) pairs, or ``{"messages": [...]}`` items, in input order."""
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
        return self._models_body(self._send("GET", "/v1/models", None, self._next_url_index(), self._closed))

    def _run(self, path: str, n: int, chunks: list[Chunk]) -> ScoreResult:
        abort = AbortFlag(parent=self._closed)
        if len(chunks) <= 1:
            outcomes = [self._send("POST", path, c.payload, c.url_index, abort) for c in chunks]
        else:
            futures = [
                self._pool.submit(self._send, "POST", path, c.payload, c.url_index, abort) for c in chunks
            ]
            try:
                outcomes = [f.result() for f in futures]
            except RequestRejected:
                abort.set("another chunk was rejected")  # the caller must fix the request: stop retrying
                for f in futures:
                    f.cancel()
                raise
        return self._assemble(path, n, list(zip(chunks, outcomes, strict=True)))

    def _send(
        self, method: str, path: str, payload: dict[str, Any] | None, url_index: int, abort: AbortFlag
    ) -> Outcome:
        """Drive the shared send loop with blocking I/O."""
        plan = self._attempts(method, path, payload, url_index, abort)
        reply: Reply = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                reply = None
                continue
            try:
                reply = self._http.request(step.method, step.url, json=step.payload)
            except httpx.TransportError as exc:
                reply = exc

    def close(self) -> None:
        self._closed.set("the client was closed")
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
