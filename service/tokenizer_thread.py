"""Tokenisation off the event loop, in batch across requests: one worker thread for all of them.

    tokenizer = TokenizerThread()
    encoded = await tokenizer.encode(model.encoder, items)   # in a request's task: EncodedPair rows
    tokenizer.close()                                         # when the batcher closes

The thread takes every request waiting to be tokenised and tokenises them in one round: the items of
all requests that hold only pairs (and share an encoder) in one call of the encoder, so the Rust
tokenizer gets them as one batch; any other request (conversations: their chat template may refuse
one) on its own, so an item the encoder refuses is the 422 of its own request and of nobody else's
(`service.items.ItemRefused`). The results go back to the event loop in one hand-off per round.

Why not `asyncio.to_thread` per request: with one pair per request (RL trainers send that, many at
once), each request then woke a pool thread and was woken back, and the tokenizer spread its two
texts over its own thread pool: together that cost the service more CPU than the tokenising itself.
Here a request that arrives while a round runs waits for the next one, so under load one round
serves many requests for one hand-off each way, and a round's pairs are tokenised together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from service.encoding import EncodedPair, Encoder
from service.errors import Draining
from service.items import Item, PairItem, encode_items

log = logging.getLogger(__name__)

Outcome = list[EncodedPair] | Exception


@dataclass(eq=False)
class _Job:
    encoder: Encoder
    items: list[Item]
    future: asyncio.Future[list[EncodedPair]]
    loop: asyncio.AbstractEventLoop


class TokenizerThread:
    """A worker thread that tokenises requests in rounds; started on the first request."""

    def __init__(self) -> None:
        self._jobs: list[_Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    async def encode(self, encoder: Encoder, items: Sequence[Item]) -> list[EncodedPair]:
        """`items` encoded by `encoder`, in order; raises what `encode_items` raises for them alone."""
        loop = asyncio.get_running_loop()
        job = _Job(encoder, list(items), loop.create_future(), loop)
        with self._wake:
            if self._closed:
                raise Draining("the service is shutting down; retry on another replica")
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokenizer", daemon=True)
                self._thread.start()
            self._wake.notify()
        return await job.future

    def close(self) -> None:
        """Take no more requests; the thread finishes the ones it holds, then exits."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return  # closed, and nothing left
                jobs, self._jobs = self._jobs, []
            try:
                outcomes = encode_round(jobs)
            except BaseException as exc:  # a bug, not an input: fail this round, keep serving
                log.exception("tokenizing a round of %d requests failed", len(jobs))
                error = exc if isinstance(exc, Exception) else RuntimeError(f"tokenizer thread: {exc!r}")
                outcomes = [error] * len(jobs)
            _hand_back(jobs, outcomes)


def encode_round(jobs: Sequence[_Job]) -> list[Outcome]:
    """Each job's encodings (or the exception its items raise alone), in the jobs' order: pair-only
    jobs that share an encoder in one call, falling back to one call each if that call fails."""
    outcomes: dict[_Job, Outcome] = {}
    pair_jobs: dict[int, list[_Job]] = {}
    for job in jobs:
        if all(isinstance(item, PairItem) for item in job.items):
            pair_jobs.setdefault(id(job.encoder), []).append(job)
        else:
            outcomes[job] = _attempt(job.encoder, job.items)
    for group in pair_jobs.values():
        together = _attempt(group[0].encoder, [item for job in group for item in job.items])
        if isinstance(together, Exception):  # let each job meet its own error (or none) alone
            outcomes.update((job, _attempt(job.encoder, job.items)) for job in group)
            continue
        start = 0
        for job in group:
            outcomes[job] = together[start : start + len(job.items)]
            start += len(job.items)
    return [outcomes[job] for job in jobs]


def _attempt(encoder: Encoder, items: list[Item]) -> Outcome:
    try:
        return encode_items(encoder, items)
    except Exception as exc:  # noqa: BLE001 - not swallowed: raised in the request it belongs to
        return exc


def _hand_back(jobs: Sequence[_Job], outcomes: Sequence[Outcome]) -> None:
    """One call into each event loop the round's requests wait on (one, in the service)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Outcome]]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, done in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, done)


def _settle(done: list[tuple[_Job, Outcome]]) -> None:
    """On the event loop: each waiting request gets its encodings or its error."""
    for job, outcome in done:
        if job.future.done():  # its request was cancelled (the client went away)
            continue
        if isinstance(outcome, Exception):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
