"""The asynchronous face: httpx.AsyncClient, chunks run as tasks under a semaphore."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from service.client._core import AbortFlag, Chunk, ClientCore, Outcome, Reply, ScoreItem, ScoreResult, Sleep
from service.client._errors import RequestRejected


class AsyncRewardClient(ClientCore):
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
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, limits=self._limits(), headers=self.headers
        )
        self._semaphore: asyncio.Semaphore | None = None  # made on first use, inside the running loop

    async def score(self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False) -> ScoreResult:
        """Scores of (question, answer) pairs, or ``{"messages": [...]}`` items, in input order."""
        result = await self._run("/score", len(pairs), self._score_chunks(pairs))
        return self._raise_if_failed(result, raise_on_failure)

    async def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str], *, raise_on_failure: bool = False
    ) -> ScoreResult:
        """OpenRLHF-style: each query is prompt + response."""
        chunks = self._reward_chunks(queries, prompts)
        return self._raise_if_failed(await self._run("/get_reward", len(queries), chunks), raise_on_failure)

    async def models(self) -> dict[str, Any]:
        outcome = await self._send("GET", "/v1/models", None, self._next_url_index(), self._closed)
        return self._models_body(outcome)

    async def _run(self, path: str, n: int, chunks: list[Chunk]) -> ScoreResult:
        abort = AbortFlag(parent=self._closed)
        tasks = [asyncio.ensure_future(self._post(path, c, abort)) for c in chunks]
        try:
            outcomes = await asyncio.gather(*tasks)
        except RequestRejected:
            abort.set("another chunk was rejected")  # the caller must fix the request: stop retrying
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self._assemble(path, n, list(zip(chunks, outcomes, strict=True)))

    async def _post(self, path: str, chunk: Chunk, abort: AbortFlag) -> Outcome:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self._semaphore:
            return await self._send("POST", path, chunk.payload, chunk.url_index, abort)

    async def _send(
        self, method: str, path: str, payload: dict[str, Any] | None, url_index: int, abort: AbortFlag
    ) -> Outcome:
        """Drive the shared send loop with asyncio I/O."""
        plan = self._attempts(method, path, payload, url_index, abort)
        reply: Reply = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                reply = None
                continue
            try:
                reply = await self._http.request(step.method, step.url, json=step.payload)
            except httpx.TransportError as exc:
                reply = exc

    async def close(self) -> None:
        self._closed.set("the client was closed")
        await self._http.aclose()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
