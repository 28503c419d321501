"""Read a conversation back out of text a policy's chat template already rendered (prompt + response).

    parse_chat_text("<|im_start|>user\\nHi?<|im_end|>\\n<|im_start|>assistant\\nHello.<|im_end|>")
    # -> ParsedChat("chatml", [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])

Why: OpenRLHF's `/get_reward` sends each sample as one string, prompt and response after the *policy's*
chat template, special tokens included. A `chat` reward model must read the conversation with *its own*
template, which may differ from the policy's; so the text is parsed back into messages and re-rendered
with the bundle's template. When the policy's template is the reward model's own, re-rendering gives
the text back (the parsers below invert the templates they recognise; the one difference is the
template's end of turn after a response that stopped without it), so that case is scored as is.

Recognised, tried in this order (the first whose markers open the text wins):

* ``chatml`` (Qwen2/2.5/3, SmolLM2, many others): ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message;
* ``llama3``: ``<|begin_of_text|>`` (optional), then
  ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`` per message;
* ``hh`` (hh-rlhf, the default bundle's data): ``\\n\\nHuman: ...\\n\\nAssistant: ...``.

The final message (the response being scored) runs to its last end-of-turn marker, or to the end of
the text when it has none (a response cut at a length limit); end-of-text and padding tokens after it
(:data:`TRAILING_TOKENS`; SmolLM2 pads with its end-of-turn token) are dropped.
Roles are returned as written: `service.conversation.validate_conversation` then refuses an unknown
one with a clear message, as for any other conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from service.conversation import hh_turns

TRAILING_TOKENS: Final = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|eot_id|>")


@dataclass(frozen=True)
class ParsedChat:
    format: str  # "chatml" | "llama3" | "hh"
    messages: list[dict[str, str]]


def parse_chat_text(text: str) -> ParsedChat | None:
    """The messages of a rendered conversation in a recognised format, or None (see the module)."""
    if text.startswith("<|im_start|>"):
        return ParsedChat("chatml", _split(text, "<|im_start|>", "\n", "<|im_end|>", after_end="\n"))
    llama = text.removeprefix("<|begin_of_text|>")
    if llama.startswith("<|start_header_id|>"):
        return ParsedChat(
            "llama3", _split(llama, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>")
        )
    if text.startswith("\n\nHuman:"):
        turns = hh_turns(text)
        if turns:
            return ParsedChat("hh", [m.as_dict() for m in turns])
    return None


def _split(text: str, start: str, header_end: str, end: str, after_end: str = "") -> list[dict[str, str]]:
    """Messages of ``start role header_end content end after_end`` blocks; the last one's end optional."""
    messages = []
    blocks = text.split(start)[1:]  # text starts with `start`: the first piece is empty
    for i, block in enumerate(blocks):
        role, found, body = block.partition(header_end)
        if not found:  # a header without its end: the whole block is the role, content empty
            role, body = block, ""
        last = i == len(blocks) - 1
        content, closed, rest = body.partition(end)
        if last:  # up to its last end marker: a marker inside the response is its text
            before, closed, _ = body.rpartition(end)
            content = _strip_trailing(before if closed else body)
        elif not closed or rest != after_end:
            content = body.removesuffix(after_end).removesuffix(end)  # an irregular block: keep its text
        messages.append({"role": role, "content": content})
    return messages


def _strip_trailing(content: str) -> str:
    """The response without end-of-text / padding tokens a generator may leave after it."""
    changed = True
    while changed:
        changed = False
        for token in TRAILING_TOKENS:
            if content.endswith(token):
                content, changed = content[: -len(token)], True
    return content
