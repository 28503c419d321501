"""Read text a policy's chat template already rendered (prompt + response) back into what it says.

    read_rendered("<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>")
    # -> Reading("chatml", messages=[{"role": "user", "content": "Hi?"},
    #                                {"role": "assistant", "content": "Hello."}])
    read_rendered("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.")
    # -> Reading("hh", pair=("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello."))

Why: OpenRLHF's `/get_reward` sends each sample as one string, prompt and response after the *policy's*
chat template, special tokens included; veRL's `/classify` and slime's prompt are rendered text too. A
reward model must read the conversation in *its own* input format, which may differ from the policy's.
So every route that takes rendered text (service/trainers.py) and every client-side adapter
(`integrations.convert`) reads it here, and the same text becomes the same item everywhere:

* a recognised chat format → the messages, which the bundle's encoder then renders its own way: a
  `chat` bundle with its chat template, a `pair` bundle as hh turns (`service.conversation`). When
  the policy's template is the reward model's own, that rendering is the text itself
  (:func:`is_own_rendering`): the text is scored as it came, completed with the end of turn a
  response may have stopped without (the form every training conversation had);
* anything else → a (question, answer) pair by the plain-text rule (`service.rendered.split_rendered`:
  after the prompt when the text starts with it, else after hh-rlhf's last ``"\\n\\nAssistant:"``, else
  the whole text is the answer). A `chat` bundle reads an hh question as its turns.

Recognised chat formats (the first whose opening marker starts the text wins):

* ``chatml`` (Qwen2/2.5/3, SmolLM2, many others): ``<|im_start|>role\\ncontent<|im_end|>\\n``;
* ``llama3``: ``<|begin_of_text|>`` (optional), then
  ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``;
* ``gemma``: ``<bos>`` (optional), then ``<start_of_turn>role\\ncontent<end_of_turn>\\n``, role
  ``model`` read as ``assistant``.

The final message (the response) runs to its last end-of-turn marker, or to the end of the text when it
has none (a response cut at a length limit); end-of-turn, end-of-text and padding tokens after it
(:data:`END_TOKENS`; SmolLM2 pads with its end-of-turn token) are dropped. Text after the end of a
final *user* turn (a prompt rendered without the generation prompt) is the response. With the prompt
given (OpenRLHF sends it), the response is exactly what follows the prompt: turn markers a policy
printed inside its answer stay its text. Roles are returned as written:
`service.conversation.validate_conversation` refuses an unknown one with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from service.conversation import hh_turns
from service.rendered import split_rendered

# end-of-turn / end-of-text / padding tokens a decoded response may end with, any number, any order
END_TOKENS: Final = (
    "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>",
)  # fmt: skip
HH_HUMAN: Final = "\n\nHuman:"  # how an hh-rlhf dialogue starts


@dataclass(frozen=True)
class _ChatFormat:
    name: str
    start: str  # opens every message
    header_end: str  # between the role and the content
    end: str  # closes a message
    after_end: str = ""  # what the template writes after `end`
    prefix: str = ""  # an optional beginning-of-text token before the first message
    roles: tuple[tuple[str, str], ...] = ()  # the format's role names that differ from ours


FORMATS: Final = (
    _ChatFormat("chatml", "<|im_start|>", "\n", "<|im_end|>", after_end="\n"),
    _ChatFormat(
        "llama3", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", prefix="<|begin_of_text|>"
    ),
    _ChatFormat(
        "gemma",
        "<start_of_turn>",
        "\n",
        "<end_of_turn>",
        "\n",
        prefix="<bos>",
        roles=(("model", "assistant"),),
    ),
)


@dataclass(frozen=True)
class ParsedChat:
    format: str  # "chatml" | "llama3" | "gemma" | "hh"
    messages: list[dict[str, str]]
    open: bool = field(default=False, compare=False)  # the last message has no end-of-turn marker


@dataclass(frozen=True)
class Reading:
    """How a rendered text is read: `messages` for a recognised chat format, else a `pair`."""

    format: str  # "chatml" | "llama3" | "gemma" (messages), "hh" | "text" (pair)
    messages: list[dict[str, str]] | None = None  # unvalidated: validate_conversation before use
    pair: tuple[str, str] | None = None


def read_rendered(text: str, prompt: str | None = None) -> Reading:
    """A rendered prompt + response (`prompt`: its prompt part, when known) → what it says (module)."""
    if prompt and text.startswith(prompt):
        return read_prompt_and_response(prompt, text[len(prompt) :])
    parsed = parse_templated(text)
    if parsed is not None:
        return Reading(parsed.format, messages=parsed.messages)
    question, answer = split_rendered(text, prompt)
    return Reading(_pair_format(question), pair=(question, answer))


def read_prompt_and_response(prompt: str, response: str) -> Reading:
    """A rendered prompt and the response apart (slime; OpenRLHF's query cut after its prompt)."""
    parsed = parse_templated(prompt)
    if parsed is None:
        return Reading(_pair_format(prompt), pair=(prompt, response))
    messages = [dict(m) for m in parsed.messages]
    answer = strip_end_tokens(response)
    if parsed.open and messages[-1]["role"] == "assistant":  # the generation prompt opened its turn
        messages[-1]["content"] += answer
    else:
        messages.append({"role": "assistant", "content": answer})
    return Reading(parsed.format, messages=messages)


def is_own_rendering(text: str, rendered: str) -> bool:
    """Whether `rendered` (a bundle's template on the messages read from `text`) gives `text` back, up
    to the end-of-turn and padding tokens after the response: then the policy's template is the
    reward model's own and the text is scored as it came."""
    return strip_end_tokens(rendered) == strip_end_tokens(text)


def parse_chat_text(text: str) -> ParsedChat | None:
    """The messages of a text in a recognised chat format or in hh-rlhf turns, or None."""
    parsed = parse_templated(text)
    if parsed is not None:
        return parsed
    if text.startswith(HH_HUMAN):
        turns = hh_turns(text)
        if turns:
            return ParsedChat("hh", [m.as_dict() for m in turns])
    return None


def parse_templated(text: str) -> ParsedChat | None:
    """The messages of a text rendered by a recognised chat template (module docstring), or None."""
    for fmt in FORMATS:
        body = text.removeprefix(fmt.prefix) if fmt.prefix else text
        if body.startswith(fmt.start):
            messages, is_open = _split(body, fmt)
            return ParsedChat(fmt.name, messages, is_open)
    return None


def strip_end_tokens(text: str) -> str:
    """`text` without the end-of-turn / end-of-text / padding tokens it ends with, and the whitespace
    between and after them; whitespace the text itself ends with (before any token) is kept."""
    while True:
        trimmed = text.rstrip()
        token = next((t for t in END_TOKENS if trimmed.endswith(t)), None)
        if token is None:
            return text
        text = trimmed[: -len(token)]


def _pair_format(question: str) -> str:
    return "hh" if question.startswith(HH_HUMAN) else "text"  # what hh_turns takes for an hh dialogue


def _split(text: str, fmt: _ChatFormat) -> tuple[list[dict[str, str]], bool]:
    """(messages, last one open) of ``start role header_end content end after_end`` blocks; `text`
    starts with `start`."""
    roles = dict(fmt.roles)
    headed = []
    for block in text.split(fmt.start)[1:]:  # the piece before the first `start` is empty
        role, found, body = block.partition(fmt.header_end)
        if not found:  # a header without its end: the whole block is the role, content empty
            role, body = block, ""
        headed.append((roles.get(role, role), body))
    messages = []
    for role, body in headed[:-1]:
        content, closed, rest = body.partition(fmt.end)
        if not closed or rest != fmt.after_end:
            content = body.removesuffix(fmt.after_end).removesuffix(fmt.end)  # irregular: keep its text
        messages.append({"role": role, "content": content})
    last, is_open = _last(*headed[-1], fmt)
    return messages + last, is_open


def _last(role: str, body: str, fmt: _ChatFormat) -> tuple[list[dict[str, str]], bool]:
    """The final block: the response (an assistant's, up to its last end marker), or a closed user
    or system turn followed by the response without a header of its own."""
    if role == "assistant":
        before, closed, tail = body.rpartition(fmt.end)
        if closed and not strip_end_tokens(tail).strip():
            return [{"role": role, "content": strip_end_tokens(before)}], False
        return [{"role": role, "content": strip_end_tokens(body)}], True  # cut, or went on after a marker
    content, closed, rest = body.partition(fmt.end)
    response = strip_end_tokens(rest.removeprefix(fmt.after_end))
    if closed and response.strip():
        return [{"role": role, "content": content}, {"role": "assistant", "content": response}], True
    return [{"role": role, "content": content if closed else strip_end_tokens(body)}], not closed
