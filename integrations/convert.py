"""The one conversion from what an RL trainer holds to the (question, answer) pair the reward model reads.

    to_pair([{"role": "user", "content": "Hi?"}], "Hello.")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")
    split_conversation("<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>")
    # -> the same pair

The default bundle's reward model was trained on hh-rlhf text: the question is the dialogue up to and
including the last ``"\\n\\nAssistant:"``, the answer the text after it with its leading space
(`training.data.split_hh_dialogue`). The policy trainer sends exactly that (`training.policy.prompts`
renders chat turns with `messages_to_hh`, answers go through `training.policy.scoring.rm_answer`), and
every adapter in this package converts through this module, so TRL, veRL, OpenRLHF, slime, `rlhf score`
and our own policy trainer ask the reward model the same question for the same dialogue.

What trainers hold, and how each becomes hh text:

* chat messages ``[{"role", "content"}, ...]``: user/assistant turns rendered as Human/Assistant turns
  (system messages dropped: hh has none); content given as a list of parts keeps its text parts;
* a string that already is an hh dialogue (starts with ``"\\n\\nHuman:"`` or ``"Human:"``): kept (a whole
  conversation in hh text is cut by the service's own rule, `service.rendered.split_rendered`);
* a string rendered by a chat template (ChatML as in Qwen and SmolLM2, Llama 3, Gemma): parsed back into
  turns, then rendered as hh; special tokens left in a completion (``<|im_end|>``, ``</s>``...) are cut;
* any other string: one user turn (a prompt) or the answer text (a completion).

Nothing here raises on odd text: a trainer must get a reward (or its own "no reward"), not a crash,
for a prompt this module does not recognise; it is then scored as plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.rendered import split_rendered
from training.data import ASSISTANT_PREFIX
from training.policy.prompts import messages_to_hh
from training.policy.scoring import rm_answer

Message = Mapping[str, Any]
Turn = tuple[str, str]  # (role, content), role in system / user / assistant
Text = str | Sequence[Message]  # what trainers pass: a string, or chat messages

HUMAN_PREFIX = "\n\nHuman:"


@dataclass(frozen=True)
class ChatTemplate:
    """How one chat-template family marks turns: a regex with groups (role, content), and its end tokens."""

    name: str
    start: str  # the marker that identifies the family in a text
    turn: re.Pattern[str]
    roles: Mapping[str, str]  # the template's role name -> system / user / assistant


_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
TEMPLATES = (
    ChatTemplate(
        "chatml",
        "<|im_start|>",
        re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL),
        _ROLES,
    ),
    ChatTemplate(
        "llama3",
        "<|start_header_id|>",
        re.compile(
            r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)",
            re.DOTALL,
        ),
        _ROLES,
    ),
    ChatTemplate(
        "gemma",
        "<start_of_turn>",
        re.compile(r"<start_of_turn>(\w+)\n(.*?)(?:<end_of_turn>|(?=<start_of_turn>)|\Z)", re.DOTALL),
        {"user": "user", "model": "assistant", "system": "system"},
    ),
)
# end-of-turn / end-of-text tokens a completion decoded with its special tokens may still carry
END_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<eos>",
)


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


def message_turns(messages: Sequence[Message], default_role: str = "user") -> list[Turn]:
    """Chat messages -> (role, content) turns; a message without a role gets ``default_role``."""
    return [(str(m.get("role", default_role)), content_text(m.get("content"))) for m in messages]


def template_turns(text: str) -> list[Turn] | None:
    """Turns of a text rendered by a known chat template, or None when no known template marks it.

    An open last turn with nothing in it (the generation prompt, ``<|im_start|>assistant\\n``) is dropped.
    """
    for template in TEMPLATES:
        if template.start not in text:
            continue
        turns = [
            (template.roles.get(role, role), content.strip()) for role, content in template.turn.findall(text)
        ]
        if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
            turns = turns[:-1]
        return turns
    return None


def strip_end_tokens(text: str) -> str:
    """Cut trailing end-of-turn tokens (and the whitespace around them) left by a decoder."""
    text = text.rstrip()
    while True:
        for token in END_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)].rstrip()
                break
        else:
            return text


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
        return messages_to_hh(message_turns(prompt))
    hh = _hh(prompt)
    if hh is not None:
        return hh if hh.rstrip().endswith(ASSISTANT_PREFIX.strip()) else hh.rstrip() + ASSISTANT_PREFIX
    turns = template_turns(prompt)
    if turns:
        return messages_to_hh(turns)
    return messages_to_hh([("user", prompt.strip())])


def to_answer(completion: Text) -> str:
    """A completion (string, or assistant messages) -> the answer text with hh's leading space."""
    if not isinstance(completion, str):
        text = "".join(
            content for role, content in message_turns(completion, "assistant") if role == "assistant"
        )
        return rm_answer(text)
    return rm_answer(strip_end_tokens(completion))


def to_pair(prompt: Text, completion: Text) -> tuple[str, str]:
    """(question, answer) for one prompt and its completion, as the reward model reads them."""
    return to_question(prompt), to_answer(completion)


def split_conversation(conversation: Text) -> tuple[str, str]:
    """A whole conversation ending in the answer (one text, or chat messages) -> (question, answer).

    Chat messages and templated text are cut at their last assistant turn; any other text by the
    service's own rule for rendered text (`service.rendered.split_rendered`: after the last
    ``"\\n\\nAssistant:"``, else the whole text answers an empty question), so a text scored here
    and the same text posted to ``/get_reward`` or ``/classify`` become the same pair.
    """
    if isinstance(conversation, str):
        turns = template_turns(conversation)
        if turns is None:
            return split_rendered(conversation)
    else:
        turns = message_turns(conversation)
    if turns and turns[-1][0] == "assistant":
        return messages_to_hh(turns[:-1]), rm_answer(turns[-1][1])
    return messages_to_hh(turns), rm_answer("")  # the conversation stops before any answer


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """OpenRLHF's ``query`` (prompt + response, one text) and its ``prompt`` -> (question, answer).

    Templated text is parsed as above; otherwise the service's rule for ``/get_reward`` applies as is.
    """
    templated = template_turns(prompt or query) is not None
    if not templated:
        return split_rendered(query, prompt)
    if prompt and query.startswith(prompt):
        return to_pair(prompt, query[len(prompt) :])
    return split_conversation(query)
