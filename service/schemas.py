"""Request and response bodies (pydantic): what /docs shows and what FastAPI validates (422).

Size limits that are configurable (items per request, characters per field) are checked in
`service.submit` against the settings and answered with 413; the schema only states the shape. The
rules of a conversation (not empty, known roles, the last message the assistant's) are checked by
`service.conversation.validate_conversation`, the one rule set every route and encoder applies.

An item of `/score` is a pair or a conversation, told apart by its keys (``messages``: a
conversation), so every request written before conversations existed means what it meant::

    {"pairs": [{"question": "Hi?", "answer": "Hello."},
               {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(
        description="prompt or dialogue so far; may be empty", examples=["How do I bake bread?"]
    )
    answer: str = Field(
        description="the response to score; may be empty", examples=["Mix flour, water, yeast..."]
    )


class PairsRequest(BaseModel):
    """Pairs only: `/score`'s body before conversations, for a server that reads nothing else (the
    naive baseline of `rlhf bench serve`)."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(description="pairs to score, answered in the same order")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="system (first message only), user or assistant", examples=["user"])
    content: str = Field(
        description="the message's text; content parts (images, tool calls) are not supported"
    )


class ConversationItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(
        description="OpenAI-style messages, at least one; the last is the assistant answer being scored"
    )


def _by_messages(conversation: type[BaseModel], other: str) -> Callable[[Any], str]:
    """The tag of a union member: ``conversation`` for a dict with `messages` (or a ``conversation``
    model), else ``other``; the one rule `/score` items and `/score/groups` groups are told apart by."""

    def kind(value: Any) -> str:
        if isinstance(value, Mapping):
            return "conversation" if "messages" in value else other
        return "conversation" if isinstance(value, conversation) else other

    return kind


ScoreItem = Annotated[
    Annotated[Pair, Tag("pair")] | Annotated[ConversationItem, Tag("conversation")],
    Discriminator(_by_messages(ConversationItem, "pair")),
]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[ScoreItem] = Field(
        description="items to score, answered in the same order: each a pair {question, answer} or a "
        "conversation {messages}"
    )


class ModelRef(BaseModel):
    name: str
    version: str


UNCERTAINTY = "per item: std across the bundle's ensemble of quality heads, in raw score units; null when the bundle has no ensemble"
UNCERTAINTY_NORMALIZED = (
    "uncertainty / train std (the units of `normalized`); null when the bundle has no ensemble"
)
SCORES = "reward-model scores (length-corrected when the bundle has a correction: see /v1/models)"


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description=SCORES + ", same order as the input")
    normalized: list[float] = Field(description="(score - train mean) / train std, from the manifest")
    truncated: list[bool] = Field(description="whether the truncation policy cut the item")
    uncertainty: list[float] | None = Field(description=UNCERTAINTY)
    uncertainty_normalized: list[float] | None = Field(description=UNCERTAINTY_NORMALIZED)
    model: ModelRef


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    answers: list[str] = Field(min_length=1, description="several answers to the same question")


class ConversationGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(
        description="the conversation before the answers (each answer becomes its final assistant message)"
    )
    answers: list[str] = Field(min_length=1, description="several answers to the same conversation")


GroupItem = Annotated[
    Annotated[Group, Tag("question")] | Annotated[ConversationGroup, Tag("conversation")],
    Discriminator(_by_messages(ConversationGroup, "question")),
]


class GroupsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[GroupItem] = Field(
        description="each a question {question, answers} or a conversation {messages, answers}"
    )


class GroupResult(BaseModel):
    scores: list[float] = Field(description=SCORES)
    normalized: list[float]
    truncated: list[bool]
    uncertainty: list[float] | None = Field(description=UNCERTAINTY)
    uncertainty_normalized: list[float] | None = Field(description=UNCERTAINTY_NORMALIZED)
    mean: float = Field(description="group mean of the raw scores (a baseline for RL)")
    leave_one_out_baselines: list[float] = Field(
        description="mean of the *other* answers' scores; for a group of one, the score itself"
    )
    advantages: list[float] = Field(description="score - leave-one-out baseline")


class GroupsResponse(BaseModel):
    groups: list[GroupResult]
    model: ModelRef


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(
        min_length=1, description="bundle directory, relative to RLHF_BUNDLE_ROOT or under it"
    )
    precision: str | None = Field(
        default=None, pattern="^(auto|fp32|int8|fp16)$", description="default: the setting"
    )


class ReloadResponse(BaseModel):
    model: dict[str, object]
    previous: dict[str, object] | None


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
