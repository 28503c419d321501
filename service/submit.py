"""What every scoring route shares: the one way to score (await the batcher), and what it answers with.

Each route, whatever protocol it speaks (ours, OpenRLHF, vLLM/veRL, SGLang, slime), validates its
body, turns it into items (`service.items`: (question, answer) pairs and conversations, the latter
checked by :func:`conversation_item`) and awaits :func:`score_items`; there is no second path to the
model. Errors are raised as `service.errors` classes and answered by the app's one handler; a bad
item is a 422 naming its place in the body (`where`), and refusing it costs no other request anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import Request, Response

from service.batcher import Scored
from service.conversation import Conversation, ConversationError, validate_conversation
from service.errors import ValidationFailed
from service.items import Item, ItemRefused
from service.limits import check_count, check_fields
from service.schemas import ErrorResponse, ModelRef
from service.state import ServiceState

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; recorded in metrics only
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (401, "missing or wrong bearer token"),
        (413, "too many bytes, items, or characters"),
        (422, "malformed input, or a conversation the model cannot read (the message names the item)"),
        (429, "queue full; see Retry-After"),
        (503, "not ready or draining"),
    ]
}  # the documented error responses of every scoring route (the body is `ErrorResponse`)


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing is sent back."""


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def conversation_item(messages: object, where: str) -> Conversation:
    """Raw messages → a checked conversation item; a broken rule is a 422 naming `where` (its JSON path)."""
    try:
        return validate_conversation(messages)
    except ConversationError as exc:
        raise ValidationFailed(f"{where}: {exc}") from exc


async def score_items(
    request: Request,
    state: ServiceState,
    items: Sequence[Item],
    where: Sequence[str],
    fields: Iterable[tuple[str, str]] = (),
) -> Scored:
    """Check the limits (items per request; characters of every string in `fields`, given as (json
    path, value)), then submit to the batcher; if the client disconnects first, cancel so the batcher
    skips the items. `where[i]` names item i in the body, for the 422 of an item the encoder refuses."""
    check_count(len(items), state.settings.max_pairs_per_request, "pairs")
    check_fields(fields, state.settings.max_field_chars)
    model = state.current_model()
    work = asyncio.ensure_future(state.batcher.submit_items(model, items))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientGone
    try:
        return work.result()
    except ItemRefused as exc:
        raise ValidationFailed(f"{where[exc.index]}: {exc.reason}") from exc
    except ConversationError as exc:  # the encoder refused the batch but no item alone (see items.py)
        raise ValidationFailed(f"the model's encoder refused the request: {exc}") from exc


def model_headers(response: Response, scored: Scored) -> None:
    """X-Model-Name / X-Model-Version of the model that scored (a reload mid-request cannot blur it)."""
    response.headers["X-Model-Name"] = scored.model.name
    response.headers["X-Model-Version"] = scored.model.version


def model_ref(scored: Scored) -> ModelRef:
    return ModelRef(name=scored.model.name, version=scored.model.version)
