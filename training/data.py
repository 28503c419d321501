"""The embedded hh-rlhf sample and the one rule that cuts an hh dialogue into (question, answer).

    path = embedded_pairs_path()                    # training/embedded/hh-rlhf-harmless-2000.jsonl.gz
    split_hh_dialogue("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.")
    # -> ("\\n\\nHuman: Hi?\\n\\nAssistant:", " Hello.")

Every reader of hh dialogues (reward training, policy prompts, the benchmarks) splits with
:func:`split_hh_dialogue`, so the text a benchmark measures is the text that is trained and served:
the question keeps its final ``"\\n\\nAssistant:"`` (the reward model learns to score what follows
that marker, and the policy's prompts end with it too), and neither side is stripped.

The data files sit in ``training/embedded/`` (package data; its README gives the source and
licence). torch-free, standard library only.
"""

from __future__ import annotations

from pathlib import Path

ASSISTANT_PREFIX = "\n\nAssistant:"
EMBEDDED_PAIRS_NAME = "hh-rlhf-harmless-2000.jsonl.gz"


def embedded_pairs_path() -> Path:
    """The 2,000 hh-rlhf harmless pairs shipped with the project (package data of ``training``).

    Raises FileNotFoundError when the file is missing (a wheel built without its package data),
    so a caller never goes on to read a path that is not there.
    """
    path = Path(__file__).resolve().parent / "embedded" / EMBEDDED_PAIRS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"the embedded hh-rlhf data is missing: {path}")
    return path


def split_hh_dialogue(dialogue: str) -> tuple[str, str] | None:
    """hh-rlhf dialogue -> (question incl. the last "\\n\\nAssistant:", answer), or None without one.

    The answer is everything after the marker, leading space included: what the reward model
    was trained on, so nothing is stripped here.
    """
    cut = dialogue.rfind(ASSISTANT_PREFIX)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT_PREFIX)
    return dialogue[:end], dialogue[end:]
