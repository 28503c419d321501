"""What a request asks to score, item by item: a (question, answer) pair or a conversation.

    items = [PairItem("How?", "Like this."), validate_conversation(messages)]
    encoded = encode_items(model.encoder, items)   # EncodedPair rows, in the items' order

Why one type for both: the batcher admits, tokenises and scores a request's items together whatever
their kind, so a conversation takes exactly the path a pair takes (admission, token budget, sorting,
scatter) and a request may mix them. Each kind is tokenised in one batched call of the bundle's
encoder, which reads it the way its model was trained (`service.encoding`).

An item the encoder refuses (a conversation the bundle's chat template will not render) raises
:class:`ItemRefused` naming its index in the request, before anything is queued: the request is
answered 422 and no other request loses anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.conversation import Conversation, ConversationError
from service.encoding import EncodedPair, Encoder


@dataclass(frozen=True)
class PairItem:
    question: str
    answer: str


Item = PairItem | Conversation  # a Conversation is validated (service.conversation.validate_conversation)


class ItemRefused(ValueError):
    """Item `index` of a request cannot be encoded; `reason` says why (without the index)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"item {index}: {reason}")
        self.index = index
        self.reason = reason


def answer_text(item: Item) -> str:
    """The text of the answer being scored (the live watch measures its length)."""
    return item.answer if isinstance(item, PairItem) else item[-1].content


def encode_items(encoder: Encoder, items: Sequence[Item]) -> list[EncodedPair]:
    """Encode every item in one batched call per kind; the result is in the items' order."""
    pair_rows = [i for i, item in enumerate(items) if isinstance(item, PairItem)]
    if len(pair_rows) == len(items):  # pairs only, as every request before conversations: one call
        return _encode_rows(_pairs(encoder), items, pair_rows)
    chat_rows = [i for i, item in enumerate(items) if not isinstance(item, PairItem)]
    encoded: dict[int, EncodedPair] = {}
    for rows, encode in ((pair_rows, _pairs(encoder)), (chat_rows, encoder.encode_conversations)):
        if rows:
            encoded.update(zip(rows, _encode_rows(encode, items, rows), strict=True))
    return [encoded[i] for i in range(len(items))]


def _pairs(encoder: Encoder) -> Callable[[Sequence[Item]], list[EncodedPair]]:
    def encode(items: Sequence[Item]) -> list[EncodedPair]:
        pairs = [item for item in items if isinstance(item, PairItem)]
        return encoder.encode([p.question for p in pairs], [p.answer for p in pairs])

    return encode


def _encode_rows(
    encode: Callable[[Sequence[Item]], list[EncodedPair]], items: Sequence[Item], rows: list[int]
) -> list[EncodedPair]:
    """`encode` on the items at `rows`; when it refuses, find the item it refuses alone (only on this
    failure path does an item cost a call of its own) and raise ItemRefused for it."""
    try:
        return encode([items[i] for i in rows])
    except ConversationError:
        for i in rows:
            try:
                encode([items[i]])
            except ConversationError as exc:
                raise ItemRefused(i, _root_reason(exc)) from exc
        raise  # no item fails alone: not an input problem, so not reported as one


def _root_reason(error: ConversationError) -> str:
    """The message of the first error in the chain (the encoders re-raise it prefixed with the index
    in their own batch, which is not the index in the request)."""
    cause: BaseException = error
    while isinstance(cause.__cause__, ConversationError):
        cause = cause.__cause__
    return str(cause)
