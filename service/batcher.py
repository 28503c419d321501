"""Dynamic batching across requests: the reason the service is fast.

One asyncio task owns the queue. A request is *admitted* (or refused at once with `Overloaded` when the
pairs admitted and not yet answered would exceed `max_queue_pairs`), tokenised off the event loop by
the tokenizer thread, in batch with the other requests that arrived meanwhile
(`service.tokenizer_thread`), and queued. The task then loops:

    wait for a first item → gather for at most `batch_wait` or until `max_batch_tokens` real tokens wait
    → drop items whose client went away → group by model (a reload never re-scores in-flight requests
    with the new model) → sort by length → cut sub-batches (≤ `max_batch_pairs`, ≤ `subbatch_tokens`
    padded) → pad + onnxruntime in a dedicated thread (every graph output in one run; the model turns
    them into served values) → scatter scores and uncertainties back to each request, in its input
    order.

Sorting matters because padding is computed, not skipped: on a mix of lengths like hh-rlhf's, an
arrival-order batch spends much of its work on padding (the gain is measured by `rlhf bench quant`,
README "Measurements", "Export and int8").
A pair's score does not depend on its batch-mates: padding is masked, and the int8 graph uses static
(calibrated) scales, so the only difference is float summation order (< 1e-4, the canary checks it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.encoding import EncodedPair, pad_batch
from service.errors import Draining, InferenceFailed, Overloaded
from service.items import Item, PairItem, answer_text
from service.metrics import ServiceMetrics
from service.model import LoadedModel, Served
from service.tokenizer_thread import TokenizerThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """What a request gets back, in its input order, and the model that produced it."""

    scores: np.ndarray  # float64 [n], length-corrected when the model applies a correction
    truncated: np.ndarray  # bool [n]
    model: LoadedModel
    uncertainty: np.ndarray | None = None  # float64 [n], raw score units; None: the graph has no ensemble
    tokens: int = 0  # real (unpadded) tokens the model read for these items


@dataclass(eq=False)
class _Pending:
    model: LoadedModel
    encoded: list[EncodedPair]
    answers: list[str]  # each item's answer text, whose length the live watch measures
    admitted: float
    future: asyncio.Future[None]  # done when every item has its values
    scores: np.ndarray = field(init=False)
    uncertainty: np.ndarray | None = field(init=False)
    truncated: np.ndarray = field(init=False)  # bool [n]
    remaining: int = field(init=False)
    tokens: int = field(init=False)  # real (unpadded) tokens: what the gathering budget counts

    def __post_init__(self) -> None:
        n = len(self.encoded)
        self.scores = np.full(n, np.nan, dtype=np.float64)
        self.uncertainty = np.full(n, np.nan, dtype=np.float64) if self.model.has_uncertainty else None
        self.truncated = np.array([e.truncated for e in self.encoded], dtype=bool)
        self.remaining = n
        self.tokens = sum(len(e) for e in self.encoded)


def plan_subbatches(
    lengths: Sequence[int], max_pairs: int, max_padded_tokens: int, max_padding_ratio: float = 1.0
) -> list[tuple[int, int]]:
    """Cut ascending `lengths` into [start, end) runs: ≤ max_pairs rows, ≤ max_padded_tokens padded tokens
    (rows × longest row), and padding ≤ max_padding_ratio of the padded tokens. A row that fits no run
    with others runs alone. Why cut on padding: on CPU a forward costs about the same per token at any
    batch size, so padding is pure waste while a smaller run costs only its fixed per-call overhead."""
    runs: list[tuple[int, int]] = []
    start = 0
    real = 0  # real tokens of the current run
    for i, length in enumerate(lengths):
        count = i - start + 1
        padded = count * length
        too_padded = (padded - real - length) > max_padding_ratio * padded
        if count > 1 and (count > max_pairs or padded > max_padded_tokens or too_padded):
            runs.append((start, i))
            start, real = i, 0
        real += length
    if start < len(lengths):
        runs.append((start, len(lengths)))
    return runs


class Batcher:
    def __init__(
        self,
        metrics: ServiceMetrics,
        *,
        max_queue_pairs: int,
        max_batch_tokens: int,
        max_batch_pairs: int,
        subbatch_tokens: int,
        batch_wait_s: float,
        retry_after_s: int = 1,
        max_padding_ratio: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.max_queue_pairs = max_queue_pairs
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self.subbatch_tokens = subbatch_tokens
        self.max_padding_ratio = max_padding_ratio
        self.batch_wait_s = batch_wait_s
        self.retry_after_s = retry_after_s
        self._queue: deque[_Pending] = deque()
        self._queued_tokens = 0
        self._admitted_pairs = 0  # admitted and not yet answered (tokenising, queued or being scored)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._tokenizer = TokenizerThread()

    # ---- request side -------------------------------------------------------------------------------
    async def submit(self, model: LoadedModel, questions: Sequence[str], answers: Sequence[str]) -> Scored:
        """Score pairs with `model` (see `submit_items`)."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        return await self.submit_items(
            model, [PairItem(q, a) for q, a in zip(questions, answers, strict=True)]
        )

    async def submit_items(self, model: LoadedModel, items: Sequence[Item]) -> Scored:
        """Score pairs and conversations with `model`, in order; raises Overloaded at once when the queue
        is full, `service.items.ItemRefused` (before queueing) when the encoder refuses an item."""
        n = len(items)
        if self._closed:
            raise Draining("the service is shutting down; retry on another replica")
        if n == 0:
            empty = np.zeros(0) if model.has_uncertainty else None
            return Scored(np.zeros(0), np.zeros(0, dtype=bool), model, empty)
        if self._admitted_pairs + n > self.max_queue_pairs:
            raise Overloaded(
                f"queue full: {self._admitted_pairs} pairs waiting, limit {self.max_queue_pairs}; "
                f"retry after {self.retry_after_s}s or send fewer pairs per request",
                retry_after=self.retry_after_s,
            )
        self._admitted_pairs += n
        self.metrics.queue_depth.set(self._admitted_pairs)
        admitted = time.perf_counter()
        pending: _Pending | None = None
        try:
            encoded = await self._tokenizer.encode(model.encoder, items)
            answers = [answer_text(item) for item in items]
            pending = _Pending(model, encoded, answers, admitted, asyncio.get_running_loop().create_future())
            self._enqueue(pending)
            await pending.future
        finally:
            if pending is not None and not pending.future.done():
                pending.future.cancel()  # client went away: the batcher skips it
            self._admitted_pairs -= n
            self.metrics.queue_depth.set(self._admitted_pairs)
        assert pending is not None, "the await above returned, so the request was queued"
        return Scored(pending.scores, pending.truncated, model, pending.uncertainty, pending.tokens)

    def _enqueue(self, pending: _Pending) -> None:
        if self._closed:
            raise Draining("the service is shutting down; retry on another replica")
        self._queue.append(pending)
        self._queued_tokens += pending.tokens
        self._wakeup.set()

    def _record(self, model: LoadedModel, answered: list[_Pending]) -> None:
        """Count the items of the requests a run just answered and feed them to the live watch: once
        per onnxruntime run rather than once per request, since with one pair per request (RL
        trainers) the fixed cost of each call to the counters and the watch was paid for every pair."""
        if not answered:
            return
        scores = np.concatenate([p.scores for p in answered])
        truncated = np.concatenate([p.truncated for p in answered])
        self.metrics.scored_pairs.inc(len(scores))
        self.metrics.truncated_pairs.inc(int(truncated.sum()))
        for value in scores.tolist():
            self.metrics.score.observe(value)
        uncertainty = (
            np.concatenate([p.uncertainty for p in answered if p.uncertainty is not None])
            if model.has_uncertainty
            else None
        )
        answers = [answer for p in answered for answer in p.answers]
        self.metrics.observe_served(model, answers, scores, truncated, uncertainty=uncertainty)  # the watch

    # ---- the one task that owns the queue -------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")
        self._task.add_done_callback(self._on_exit)

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("batcher task died: %r; the service is no longer ready", task.exception())

    async def close(self) -> None:
        """Stop taking work; fail whatever is still queued with Draining."""
        self._closed = True
        self._tokenizer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Draining("the service shut down before this request was scored"))
        self._engine.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._queue:
                self._wakeup.clear()
                continue
            deadline = self._queue[0].admitted + self.batch_wait_s
            while self._queued_tokens < self.max_batch_tokens:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            taken = self._take()
            if taken:
                await self._process(taken)

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        tokens = 0
        while self._queue:
            head = self._queue[0]
            if taken and tokens + head.tokens > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= head.tokens
            if head.future.done():  # cancelled: its client went away
                continue
            taken.append(head)
            tokens += head.tokens
        if not self._queue:
            self._wakeup.clear()
        return taken

    async def _process(self, taken: list[_Pending]) -> None:
        now = time.perf_counter()
        by_model: dict[int, list[_Pending]] = {}
        for pending in taken:
            self.metrics.queue_wait.observe(now - pending.admitted)
            by_model.setdefault(id(pending.model), []).append(pending)
        loop = asyncio.get_running_loop()
        for group in by_model.values():
            model = group[0].model
            rows = sorted(
                ((len(e), p, i) for p in group for i, e in enumerate(p.encoded)), key=lambda row: row[0]
            )
            lengths = [row[0] for row in rows]
            for start, end in plan_subbatches(
                lengths, self.max_batch_pairs, self.subbatch_tokens, self.max_padding_ratio
            ):
                chunk = rows[start:end]
                live = [row for row in chunk if not row[1].future.done()]
                if not live:
                    continue
                pairs = [p.encoded[i] for _, p, i in live]
                answered: list[_Pending] = []  # requests whose last items this run scores
                try:
                    served = await loop.run_in_executor(self._engine, self._infer, model, pairs)
                except InferenceFailed as exc:
                    log.error("inference failed: %s", exc.message)
                    for _, pending, _ in live:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                for row, (_, pending, i) in enumerate(live):
                    pending.scores[i] = served.scores[row]
                    if pending.uncertainty is not None and served.uncertainty is not None:
                        pending.uncertainty[i] = served.uncertainty[row]
                    pending.remaining -= 1
                    if pending.remaining == 0 and not pending.future.done():
                        pending.future.set_result(None)
                        answered.append(pending)
                self._record(model, answered)

    def _infer(self, model: LoadedModel, pairs: list[EncodedPair]) -> Served:
        """Runs in the engine thread: pad, run onnxruntime (every output in one run), record the batch
        facts, turn the outputs into served values (the length correction, when the model has one)."""
        batch = pad_batch(pairs, model.encoder.pad_token_id)
        padded = batch["input_ids"].size
        real = int(batch["attention_mask"].sum())
        started = time.perf_counter()
        outputs = model.backend.run(batch)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_pairs.observe(len(pairs))
        self.metrics.batch_tokens.observe(padded)
        self.metrics.padding_ratio.observe((padded - real) / padded)
        return model.served(outputs, np.array([pair.answer_tokens for pair in pairs], dtype=np.int64))
