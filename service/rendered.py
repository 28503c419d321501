"""Text a trainer sends already rendered (prompt + response in one string) → the (question, answer) pair.

    split_rendered("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.", "\\n\\nHuman: Hi?\\n\\nAssistant:")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")          the prompt is a prefix: cut after it
    split_rendered("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")          no prompt: cut after the last marker
    split_rendered("Just some text.")  # -> ("", "Just some text.")

OpenRLHF's `/get_reward` sends `query` = prompt + response with the prompt beside it; veRL's
`/classify` (vLLM) and SGLang's `/v1/embeddings` send only the rendered text. Every such route splits
with :func:`split_rendered`, so the same text becomes the same pair whichever trainer sent it, and the
pair is then scored exactly as `POST /score` scores it.

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
