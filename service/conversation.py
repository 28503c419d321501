"""Conversations: the `chat` input format, its validation, and its two conversions to and from pairs.

    conversation = validate_conversation([{"role": "user", "content": "Hi?"},
                                          {"role": "assistant", "content": "Hello."}])
    pair_to_conversation("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")   # the same two messages
    conversation_to_hh(conversation)  # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")

A conversation is OpenAI-style messages whose last one is the assistant answer being scored. Why the
two conversions live here, once: a `chat` bundle is sent pairs by every route that predates it (and
by trainers), and a `pair` bundle is sent conversations; each must read the other's input the way
the model was trained, whichever route it came through.

* pair → conversation: an hh-rlhf question (``"\\n\\nHuman: ...\\n\\nAssistant:"``) becomes its turns,
  any other question one user message; the answer is the final assistant message.
* conversation → pair: hh-rlhf text, the format of the embedded data every default `pair` bundle is
  trained on: user and assistant turns as ``Human:`` and ``Assistant:`` turns, contents stripped (as
  :func:`hh_turns` reads them back). A system message is dropped: hh has no such turn, the default
  bundle never read one, and a chat template's default system message (SmolLM2's, Qwen's) would
  otherwise open every question; the policy trainer and `integrations.convert` render turns the same way.

Rules (each broken one raises :class:`InvalidConversation` naming the message): at least one message;
each a mapping with a ``role`` in :data:`ROLES` and a string ``content``; a ``system`` message only
first; the last message from the ``assistant``.

Error tree (all are ValueError, so a caller that validates input catches them at one level)::

    ConversationError
     ├── InvalidConversation   the messages break a rule above
     └── TemplateRenderError   the bundle's chat template refused or failed to render them
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

ROLES: Final = ("system", "user", "assistant")
HH_ASSISTANT: Final = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_HH_NAME = {"user": "Human", "assistant": "Assistant"}


class ConversationError(ValueError):
    """A conversation cannot be encoded; the message says which message and why."""


class InvalidConversation(ConversationError):
    pass


class TemplateRenderError(ConversationError):
    pass


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = tuple[Message, ...]


def validate_conversation(messages: object) -> Conversation:
    """Raw messages (mappings or :class:`Message`) → a checked conversation; see the module rules."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidConversation(f"a conversation is a list of messages, got {type(messages).__name__}")
    if not messages:
        raise InvalidConversation(
            "the conversation is empty: it needs at least the assistant answer to score"
        )
    checked = tuple(_message(i, raw) for i, raw in enumerate(messages))
    for i, message in enumerate(checked):
        if message.role == "system" and i > 0:
            raise InvalidConversation(f"message {i}: a system message may only come first")
    if checked[-1].role != "assistant":
        raise InvalidConversation(
            f"the last message (message {len(checked) - 1}) is from {checked[-1].role!r}: "
            "it must be the assistant answer being scored"
        )
    return checked


def _message(index: int, raw: object) -> Message:
    if isinstance(raw, Message):
        role, content = raw.role, raw.content
    elif isinstance(raw, Mapping):
        if "role" not in raw or "content" not in raw:
            raise InvalidConversation(f"message {index}: needs both 'role' and 'content'")
        role, content = raw["role"], raw["content"]
    else:
        raise InvalidConversation(
            f"message {index}: expected an object with role and content, got {raw!r:.80}"
        )
    if role not in ROLES:
        raise InvalidConversation(
            f"message {index}: unknown role {role!r:.60}; expected one of {', '.join(ROLES)}"
        )
    if not isinstance(content, str):
        raise InvalidConversation(
            f"message {index}: content must be a string, got {type(content).__name__} "
            "(content parts such as images or tool calls are not supported)"
        )
    return Message(role, content)


def hh_turns(question: str) -> Conversation | None:
    """An hh-rlhf question's turns (contents stripped, the open final assistant turn removed), or None
    when the text is not hh-formatted (it must start with ``"\\n\\nHuman:"``)."""
    parts = _HH_TURN.split(question)  # [preamble, name, text, name, text, ...]
    if len(parts) < 3 or parts[0] or parts[1] != "Human":
        return None
    turns = [
        Message(_HH_ROLE[name], text.strip()) for name, text in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if turns[-1].role == "assistant" and not turns[-1].content:
        turns.pop()  # "...\n\nAssistant:" opens the answer's turn: the answer fills it
    return tuple(turns)


def pair_to_conversation(question: str, answer: str) -> Conversation:
    """A (question, answer) pair as the conversation a `chat` model reads (module docstring)."""
    turns = hh_turns(question)
    if turns is not None:
        return (*turns, Message("assistant", answer.strip()))
    return (Message("user", question), Message("assistant", answer))


def conversation_to_hh(conversation: Conversation) -> tuple[str, str]:
    """A checked conversation as the hh-rlhf (question, answer) a `pair` model reads: the question
    ends with ``"\\n\\nAssistant:"`` and the answer starts with a space, as `training.data` splits hh;
    a system message is dropped (module docstring)."""
    *history, answer = conversation
    turns = "".join(f"\n\n{_HH_NAME[m.role]}: {m.content.strip()}" for m in history if m.role != "system")
    return turns + HH_ASSISTANT, " " + answer.content.strip()
