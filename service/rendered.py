"""Rendered text in no recognised chat format (prompt + response in one string) → the (question, answer) pair.

    split_rendered("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.", "\\n\\nHuman: Hi?\\n\\nAssistant:")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")          the prompt is a prefix: cut after it
    split_rendered("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")          no prompt: cut after the last marker
    split_rendered("Just some text.")  # -> ("", "Just some text.")

The plain-text rule, and only that: the trainer routes (`/get_reward`, `/classify`, `/v1/embeddings`,
`/slime/reward`) and the client-side adapters read rendered text with `service.chat_text`, which reads a
recognised chat template back into its conversation first and hands any other text to
:func:`split_rendered` (docs/chat-text.md, rule 3). It is its own small function because every request
written before chat templates were read still scores by it, exactly as it did.

The rule, in order: (1) the text starts with the given prompt → question = the prompt, answer = the
rest; (2) the text holds hh-rlhf's assistant marker ``"\\n\\nAssistant:"`` → cut after its last
occurrence, the question keeping the marker and the answer everything after it (leading space
included): the format the default bundle was trained on (training/data.py splits its data the same
way); (3) otherwise the whole text is the answer to the prompt (or to an empty question).
"""

from __future__ import annotations

from typing import Final

ASSISTANT_MARKER: Final = "\n\nAssistant:"


def split_rendered(text: str, prompt: str | None = None) -> tuple[str, str]:
    """(question, answer) of a rendered prompt + response; see the module docstring for the rule."""
    if prompt and text.startswith(prompt):
        return prompt, text[len(prompt) :]
    cut = text.rfind(ASSISTANT_MARKER)
    if cut >= 0:
        end = cut + len(ASSISTANT_MARKER)
        return text[:end], text[end:]
    return prompt or "", text
