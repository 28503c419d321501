"""Score in the input the served bundle reads: hh pairs for a `pair` bundle, conversations for a `chat` one.

    result, model = score_as_served(client, lambda fmt: [to_item(p, c, fmt) for p, c in samples])
    result, model = await score_as_served_async(client, build)      # the same, with an asyncio client

Why: a `chat` bundle reads a pair too (as the turns of its hh question), but a pair cannot hold a system
message and hh text strips every content, so the reward model would not read what the policy was
given. Sent as a conversation (`integrations.convert.to_item`), the sample is rendered by the reward
model's own chat template exactly as written. A `pair` bundle keeps getting the hh pair it was trained on.

How the format is known (``GET /v1/models``' ``input_format``) without a lookup per call: each client
remembers the last model it saw; the first call looks it up. After every call the model that actually
scored is checked (`reward_options.served_model`: once per model version, cached): when it reads the
other format (a reload changed the bundle), the call is scored once more in that format, so every
reward comes from the input its model reads. ``build`` is called with the format and returns the items.

When the format cannot be known (the first lookup failed and so did the one after the scores), the
result's scores are NaN with the reason in ``errors``: each adapter's own "no reward" (or its error),
never a reward of an input the model may not read.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from integrations.convert import InputFormat
from integrations.reward_options import ServedModel, remember_models_body, served_model, served_model_async
from service.client import RewardUnavailable, ScoreItem, ScoreResult

Build = Callable[[InputFormat], Sequence[ScoreItem]]
GUESS: InputFormat = "pair"  # sent while the model's format is unknown: every bundle reads a pair
UNKNOWN = "the served model's input format could not be looked up (GET /v1/models failed)"


class BlockingClient(Protocol):
    def score(self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False) -> ScoreResult: ...

    def models(self) -> dict[str, Any]: ...


class AsyncClient(Protocol):
    def score(
        self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False
    ) -> Awaitable[ScoreResult]: ...

    def models(self) -> Awaitable[dict[str, Any]]: ...


_latest: weakref.WeakKeyDictionary[Any, ServedModel] = weakref.WeakKeyDictionary()  # per client
_lock = threading.Lock()


def score_as_served(
    client: BlockingClient, build: Build, *, raise_on_failure: bool = False
) -> tuple[ScoreResult, ServedModel | None]:
    """The scores of ``build(format)`` in the input format of the model that scores them, and that
    model (None when nothing was scored, or the service moved on to another model meanwhile)."""
    known = _known(client)
    if known is None:
        known = _lookup(lambda: remember_models_body(client, client.models()))
    sent = GUESS if known is None else known.input_format
    result = client.score(build(sent), raise_on_failure=raise_on_failure)
    model = _lookup(lambda: served_model(client, result))
    if model is not None and model.input_format != sent:
        sent = model.input_format
        result = client.score(build(sent), raise_on_failure=raise_on_failure)
        model = _lookup(lambda: served_model(client, result))
    return _settled(client, result, model, guessed=known is None)


async def score_as_served_async(
    client: AsyncClient, build: Build, *, raise_on_failure: bool = False
) -> tuple[ScoreResult, ServedModel | None]:
    """As `score_as_served`, with an asyncio client."""
    known = _known(client)
    if known is None:
        try:
            known = remember_models_body(client, await client.models())
        except RewardUnavailable:
            known = None
    sent = GUESS if known is None else known.input_format
    result = await client.score(build(sent), raise_on_failure=raise_on_failure)
    model = await _lookup_async(client, result)
    if model is not None and model.input_format != sent:
        sent = model.input_format
        result = await client.score(build(sent), raise_on_failure=raise_on_failure)
        model = await _lookup_async(client, result)
    return _settled(client, result, model, guessed=known is None)


# ---- what both faces share ---------------------------------------------------------------------------------
def _known(client: object) -> ServedModel | None:
    with _lock:
        return _latest.get(client)


def _lookup(lookup: Callable[[], ServedModel | None]) -> ServedModel | None:
    """The model, or None when ``GET /v1/models`` failed (the scores decide what that means: `_settled`)."""
    try:
        return lookup()
    except RewardUnavailable:
        return None


async def _lookup_async(client: AsyncClient, result: ScoreResult) -> ServedModel | None:
    try:
        return await served_model_async(client, result)
    except RewardUnavailable:
        return None


def _settled(
    client: object, result: ScoreResult, model: ServedModel | None, guessed: bool
) -> tuple[ScoreResult, ServedModel | None]:
    """Remember the model that scored. Scores sent in the guessed format to a model whose format was
    never learnt are not rewards: NaN, with the reason in ``errors``."""
    if model is not None:
        with _lock:
            _latest[client] = model
        return result, model
    if guessed and result.model_version is not None:
        nan = np.full(len(result.scores), np.nan)
        failed = dataclasses.replace(
            result, scores=nan, normalized=nan.copy(), failed=len(nan), errors=[*result.errors, UNKNOWN]
        )
        return failed, None
    return result, None
