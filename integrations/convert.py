"""The one conversion from what an RL trainer holds to the item the served reward model reads.

    to_pair([{"role": "user", "content": "Hi?"}], "Hello.")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")
    split_conversation("<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>")
    # -> the same pair
    to_item([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}], "Hello.", "chat")
    # -> {"messages": [system "Be brief.", user "Hi?", assistant "Hello."]}

Which item depends on the bundle's input format (``GET /v1/models``' ``input_format``; the adapters
look it up with `integrations.served_format`): a ``pair`` bundle gets the hh pair below, a ``chat``
bundle a conversation (``{"messages": [...]}``, docs/api.md) that keeps what hh text cannot hold, so its
chat template renders what the trainer had: system messages, and contents exactly as written (hh
text strips them). The ``to_item`` / ``split_conversation_item`` / ``split_query_item`` functions
choose; the rest of this docstring is about the pair.

The default bundle's reward model was trained on hh-rlhf text: the question is the dialogue up to and
including the last ``"\\n\\nAssistant:"``, the answer the text after it with its leading space
(`training.data.split_hh_dialogue`). The policy trainer sends exactly that (`training.policy.prompts`),
and every adapter in this package converts through this module, so TRL, veRL, OpenRLHF, slime, `rlhf
score` and our own policy trainer ask the reward model the same question for the same dialogue.

This module reads and writes nothing on its own: rendered text is read by the service's reader
(`service.chat_text`, the one the `/get_reward`, `/classify` and `/slime/reward` routes use) and turns
become hh text by the service's rule (`service.conversation.conversation_to_hh`, the one a `pair`
bundle reads conversations with). So a text an adapter converts and the same text posted to a route
become the same pair. What trainers hold, and how each becomes hh text:

* chat messages ``[{"role", "content"}, ...]``: user/assistant turns rendered as Human/Assistant turns
  (system messages dropped: hh has none); content given as a list of parts keeps its text parts;
* a string that already is an hh dialogue (starts with ``"\\n\\nHuman:"`` or ``"Human:"``): kept (a whole
  conversation in hh text is cut by the service's rule, `service.rendered.split_rendered`);
* a string rendered by a chat template (ChatML as in Qwen and SmolLM2, Llama 3, Gemma): read back into
  turns (`service.chat_text`), then rendered as hh; end-of-turn and padding tokens after a completion
  (``<|im_end|>``, ``</s>``...) are cut;
* any other string: one user turn (a prompt) or the answer text (a completion).

Nothing here raises on odd input: a trainer must get a reward (or its own "no reward"), not a crash.
Where the service's routes refuse a conversation with a 422 (a role such as ``tool``), this module
drops the turn hh cannot hold and scores the rest.

For a ``chat`` bundle the same inputs become conversations, each exactly the one the service's routes
read from the same text (so a sample scores the same through an adapter and through a route): chat
messages keep system (first only), user and assistant turns with their content as written (other
roles and later system messages dropped, as above); chat-templated text is read back into its turns
(`service.chat_text`); an hh dialogue becomes the turns a chat bundle reads an hh pair as
(`service.conversation.pair_to_conversation`); any other text is one user turn. The completion is the
final assistant message, end-of-turn tokens cut, otherwise as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from service.chat_text import (
    Reading,
    parse_templated,
    read_prompt_and_response,
    read_rendered,
    strip_end_tokens,
)
from service.conversation import HH_ASSISTANT, ROLES, Message, conversation_to_hh, pair_to_conversation

ChatMessage = Mapping[str, Any]
Text = str | Sequence[ChatMessage]  # what trainers pass: a string, or chat messages
InputFormat = Literal["pair", "chat"]  # a bundle's manifest `input_format`, as GET /v1/models reports it
ConversationItem = dict[str, list[dict[str, str]]]  # {"messages": [...]}, as POST /score takes it
Item = tuple[str, str] | ConversationItem  # what the client sends (`service.client.ScoreItem`)

HUMAN_PREFIX = "\n\nHuman:"
HH_ROLES = ("user", "assistant")  # the turns hh text holds


def content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts are kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return "" if content is None else str(content)


def hh_turns_of(messages: Sequence[ChatMessage], default_role: str = "user") -> list[Message]:
    """Chat messages → the turns hh text holds (user, assistant); a message without a role gets
    ``default_role``, any other role (system, tool, ...) is dropped."""
    turns = []
    for message in messages:
        role = message.get("role", default_role)
        if role in HH_ROLES:
            turns.append(Message(str(role), content_text(message.get("content"))))
    return turns


def _hh_pair(history: Sequence[Message], answer: str) -> tuple[str, str]:
    return conversation_to_hh((*history, Message("assistant", answer)))


def _split_turns(turns: list[Message]) -> tuple[str, str]:
    """Turns as hh text cut at the last one: the answer when it is the assistant's, else empty."""
    if turns and turns[-1].role == "assistant":
        return _hh_pair(turns[:-1], turns[-1].content)
    return _hh_pair(turns, "")


def _pair_of(reading: Reading) -> tuple[str, str]:
    """What the reward model is asked for a reading of rendered text: its conversation as hh turns,
    or its pair as it is."""
    if reading.messages is None:
        assert reading.pair is not None, "a reading holds messages or a pair"
        return reading.pair
    return _split_turns(hh_turns_of(reading.messages))


def _hh(text: str) -> str | None:
    """The text as an hh dialogue when it is one (a missing leading blank line is restored), else None."""
    if text.startswith(HUMAN_PREFIX):
        return text
    if text.lstrip().startswith("Human:"):
        return "\n\n" + text.lstrip()
    return None


def to_question(prompt: Text) -> str:
    """A prompt (string, hh text, templated text, or chat messages) -> the hh question, ending in Assistant:."""
    if not isinstance(prompt, str):
        return _hh_pair(hh_turns_of(prompt), "")[0]
    hh = _hh(prompt)
    if hh is not None:
        return hh if hh.rstrip().endswith(HH_ASSISTANT.strip()) else hh.rstrip() + HH_ASSISTANT
    parsed = parse_templated(prompt)
    if parsed is not None:
        turns = hh_turns_of(parsed.messages)
        if parsed.open and turns and turns[-1].role == "assistant":
            turns.pop()  # the generation prompt: the turn the answer opens
        return _hh_pair(turns, "")[0]
    return _hh_pair([Message("user", prompt)], "")[0]


def to_answer(completion: Text) -> str:
    """A completion (string, or assistant messages) -> the answer text with hh's leading space."""
    if isinstance(completion, str):
        text = strip_end_tokens(completion)
    else:
        text = "".join(t.content for t in hh_turns_of(completion, "assistant") if t.role == "assistant")
    return conversation_to_hh((Message("assistant", text),))[1]


def to_pair(prompt: Text, completion: Text) -> tuple[str, str]:
    """(question, answer) for one prompt and its completion, as the reward model reads them.

    A templated prompt and a text completion are read together, as `/slime/reward` reads them
    (a generation prompt that already opened the answer, e.g. with a prefilled start, keeps it)."""
    if isinstance(prompt, str) and isinstance(completion, str) and parse_templated(prompt) is not None:
        return _pair_of(read_prompt_and_response(prompt, completion))
    return to_question(prompt), to_answer(completion)


def split_conversation(conversation: Text) -> tuple[str, str]:
    """A whole conversation ending in the answer (one text, or chat messages) -> (question, answer).

    Text is read as the routes read a text without its prompt (`/classify`): templated text at its
    last assistant turn, any other by the service's plain-text rule (after the last
    ``"\\n\\nAssistant:"``, else the whole text answers an empty question)."""
    if isinstance(conversation, str):
        return _pair_of(read_rendered(conversation))
    return _split_turns(hh_turns_of(conversation))


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """OpenRLHF's ``query`` (prompt + response, one text) and its ``prompt`` -> (question, answer), as
    the service's ``/get_reward`` reads them."""
    return _pair_of(read_rendered(query, prompt))


# ---- a `chat` bundle: conversations ({"messages": [...]}) --------------------------------------------------
def chat_turns_of(messages: Sequence[ChatMessage], default_role: str = "user") -> list[Message]:
    """Chat messages → the turns a conversation item may hold, contents as written: a system message
    only first, user and assistant turns; a message without a role gets ``default_role``, any other
    role (tool, ipython, ...) and a later system message are dropped."""
    turns: list[Message] = []
    for message in messages:
        role = str(message.get("role", default_role))
        if role in ROLES and (role != "system" or not turns):
            turns.append(Message(role, content_text(message.get("content"))))
    return turns


def _answered(turns: Sequence[Message]) -> ConversationItem:
    """The item of turns that should end in the answer; without one, the answer is empty (as the pair's)."""
    if not turns or turns[-1].role != "assistant":
        turns = [*turns, Message("assistant", "")]
    return {"messages": [turn.as_dict() for turn in turns]}


def _completion_text(completion: Text) -> str:
    """A completion's text as written, end-of-turn tokens cut (the pair's `to_answer`, unstripped)."""
    if isinstance(completion, str):
        return strip_end_tokens(completion)
    return "".join(t.content for t in chat_turns_of(completion, "assistant") if t.role == "assistant")


def _conversation_of(reading: Reading) -> ConversationItem:
    """The conversation of a reading of rendered text, as the service's routes score it for a chat
    bundle: its messages, or its (question, answer) pair read as a chat bundle reads a pair."""
    if reading.messages is not None:
        return _answered(chat_turns_of(reading.messages))
    assert reading.pair is not None, "a reading holds messages or a pair"
    return _answered(pair_to_conversation(*reading.pair))


def to_messages(prompt: Text, completion: Text) -> ConversationItem:
    """The conversation of one prompt and its completion (module docstring, last paragraph)."""
    answer = _completion_text(completion)
    if not isinstance(prompt, str):
        return _answered([*chat_turns_of(prompt), Message("assistant", answer)])
    if parse_templated(prompt) is not None:
        return _conversation_of(read_prompt_and_response(prompt, answer))
    hh = _hh(prompt)
    if hh is not None:
        return _answered(pair_to_conversation(to_question(hh), to_answer(completion)))
    return _answered([Message("user", prompt), Message("assistant", answer)])


def split_conversation_messages(conversation: Text) -> ConversationItem:
    """A whole conversation ending in the answer (one text, or chat messages) as a conversation item;
    text is read as the routes read a text without its prompt (`split_conversation`)."""
    if isinstance(conversation, str):
        return _conversation_of(read_rendered(conversation))
    return _answered(chat_turns_of(conversation))


def split_query_messages(query: str, prompt: str | None) -> ConversationItem:
    """OpenRLHF's ``query`` and ``prompt`` as the conversation ``/get_reward`` reads from them."""
    return _conversation_of(read_rendered(query, prompt))


# ---- the item for the served bundle's input format ---------------------------------------------------------
def to_item(prompt: Text, completion: Text, input_format: InputFormat) -> Item:
    """`to_messages` for a ``chat`` bundle, else `to_pair`."""
    return to_messages(prompt, completion) if input_format == "chat" else to_pair(prompt, completion)


def split_conversation_item(conversation: Text, input_format: InputFormat) -> Item:
    """`split_conversation_messages` for a ``chat`` bundle, else `split_conversation`."""
    if input_format == "chat":
        return split_conversation_messages(conversation)
    return split_conversation(conversation)


def split_query_item(query: str, prompt: str | None, input_format: InputFormat) -> Item:
    """`split_query_messages` for a ``chat`` bundle, else `split_query`."""
    return split_query_messages(query, prompt) if input_format == "chat" else split_query(query, prompt)
