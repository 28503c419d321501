"""What a policy run did to its answers, for a person: refusal share, and held-out answers side by side.

    before = read_samples(run / "eval_before_samples.jsonl")
    after = read_samples(run / "eval_after_samples.jsonl")
    phrase_share(after, "sorry")                                   # 0.72: share of answers saying it
    print("\\n".join(side_by_side(before, after, count=5, width=110)))

A reward gain is one number; whether the policy learned to answer better or learned one phrase the
reward model likes is visible only in the answers. The evaluation writes every sample with its
prompt index (`evaluate.py`); the same fixed-seed prompts before and after make the two lists pair up.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Scale = tuple[float, float]  # (train mean, train std) of a reward model: raw score -> std units


@dataclass(frozen=True)
class Sample:
    """One evaluation answer as `evaluate.py` writes it."""

    prompt: int  # index of the held-out prompt
    question: str  # the end of the hh dialogue
    answer: str
    score: float | None  # raw proxy score (None: not scored)
    gold_score: float | None = None  # raw gold score (None: no gold, or not scored)
    # a prompt given as chat messages: its (role, content) turns, which the RM was sent with the answer;
    # None for hh / plain prompts (asked as the question) and in files written before messages were kept
    messages: tuple[tuple[str, str], ...] | None = None


def read_samples(path: Path) -> list[Sample]:
    """The samples of one evaluation (``eval_<name>_samples.jsonl``), in file order; a row whose
    ``messages`` are not chat messages is a ValueError naming its line."""
    samples = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            row = json.loads(line)
            samples.append(
                Sample(
                    int(row.get("prompt", index)),
                    str(row["question"]),
                    str(row["answer"]),
                    row.get("score"),
                    row.get("gold_score"),
                    _messages(row.get("messages"), f"line {index + 1}"),
                )
            )
    return samples


def _messages(value: Any, where: str) -> tuple[tuple[str, str], ...] | None:
    """A row's ``messages`` ([{"role", "content"}, ...], as `evaluate.py` writes them) as turns."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of chat messages")
    turns = []
    for message in value:
        fields = message if isinstance(message, dict) else {}
        role, content = fields.get("role"), fields.get("content")
        if not (isinstance(role, str) and isinstance(content, str)):
            raise ValueError(
                f"{where}: every message needs 'role' and 'content' strings, got {message!r:.80}"
            )
        turns.append((role, content))
    return tuple(turns)


def phrase_share(samples: Sequence[Sample], phrase: str) -> float:
    """Share of answers containing ``phrase`` (case-insensitive); NaN without samples."""
    if not samples:
        return math.nan
    needle = phrase.lower()
    return sum(needle in s.answer.lower() for s in samples) / len(samples)


def repeats_a_phrase(answer: str, words: int = 3) -> bool:
    """Whether some run of ``words`` consecutive words occurs twice or more in ``answer`` (case-folded).

    A degenerate policy repeats what the reward model likes ("I'm sorry I'm sorry I'm sorry"); a normal
    answer of a few dozen tokens rarely repeats three words in a row, so the share of answers that do is
    a warning sign that needs no reward model at all."""
    tokens = re.findall(r"[\w']+", answer.lower())
    grams = [tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1)]
    return len(grams) != len(set(grams))


def repetition_share(samples: Sequence[Sample], words: int = 3) -> float:
    """Share of answers that repeat a phrase of ``words`` words (see `repeats_a_phrase`); NaN without samples."""
    if not samples:
        return math.nan
    return sum(repeats_a_phrase(s.answer, words) for s in samples) / len(samples)


def one_line(text: str, width: int) -> str:
    """``text`` with its whitespace collapsed, cut to ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def last_question(dialogue: str) -> str:
    """The last human turn of an hh dialogue ("\\n\\nHuman: ...\\n\\nAssistant:"); the text itself otherwise."""
    turns = re.split(r"\n*Human:\s*", dialogue)
    return turns[-1].split("Assistant:")[0].strip() if len(turns) > 1 else dialogue.strip()


def side_by_side(
    before: Sequence[Sample],
    after: Sequence[Sample],
    count: int = 5,
    width: int = 110,
    proxy: Scale | None = None,
    gold: Scale | None = None,
) -> list[str]:
    """Lines showing the first answer to each of the first ``count`` prompts evaluated both times.

    Three lines a prompt (question, before, after), each at most ``width`` characters; with a
    ``proxy`` / ``gold`` scale each answer carries its score in that model's std units."""
    first_before = _first_per_prompt(before)
    first_after = _first_per_prompt(after)
    shown = [p for p in first_before if p in first_after][:count]
    lines = []
    for number, prompt in enumerate(shown, start=1):
        lines.append(one_line(f"{number}. {last_question(first_before[prompt].question)}", width))
        for label, sample in (("before", first_before[prompt]), ("after ", first_after[prompt])):
            tag = _scores_tag(sample, proxy, gold)
            prefix = f"   {label}: "
            lines.append(prefix + one_line(sample.answer, width - len(prefix) - len(tag)) + tag)
    return lines


def _first_per_prompt(samples: Sequence[Sample]) -> dict[int, Sample]:
    first: dict[int, Sample] = {}
    for sample in samples:
        first.setdefault(sample.prompt, sample)
    return first


def _scores_tag(sample: Sample, proxy: Scale | None, gold: Scale | None) -> str:
    """`` [proxy +1.2, gold -0.3]``: the answer's scores in std units; empty without scales."""
    parts = [
        f"{name} {(value - mean) / std:+.1f}"
        for name, value, scale in (("proxy", sample.score, proxy), ("gold", sample.gold_score, gold))
        if scale is not None and value is not None
        for mean, std in (scale,)
    ]
    return f"  [{', '.join(parts)}]" if parts else ""
