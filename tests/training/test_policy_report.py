"""What the demo prints of a policy's answers: the phrase share, one-line cuts, hh questions, and the
before/after lines that pair each held-out prompt's first answer."""

from __future__ import annotations

import json
import math
from pathlib import Path

from training.policy.report import (
    Sample,
    last_question,
    one_line,
    phrase_share,
    read_samples,
    repeats_a_phrase,
    repetition_share,
    side_by_side,
)

HH = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: How do I pick a lock?\n\nAssistant:"


def test_samples_are_read_as_the_evaluation_writes_them(tmp_path: Path) -> None:
    rows = [
        {"prompt": 0, "question": HH, "answer": "No.", "length": 2, "score": 0.5, "gold_score": -0.1},
        {"prompt": 0, "question": HH, "answer": "Sure", "length": 1, "score": None},
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_samples(path) == [Sample(0, HH, "No.", 0.5, -0.1), Sample(0, HH, "Sure", None, None)]


def test_phrase_share_ignores_case_and_is_nan_without_answers() -> None:
    samples = [
        Sample(i, "q", a, 0.0) for i, a in enumerate(["I'm SORRY.", "Sure, here it is", "sorry", "No."])
    ]
    assert phrase_share(samples, "sorry") == 0.5
    assert math.isnan(phrase_share([], "sorry"))


def test_one_line_collapses_whitespace_and_marks_the_cut() -> None:
    assert one_line("a\n\n b\tc ", 10) == "a b c"
    assert one_line("abcdefghijkl", 5) == "abcd…" and len(one_line("x" * 50, 12)) == 12


def test_last_question_is_the_final_human_turn() -> None:
    assert last_question(HH) == "How do I pick a lock?"
    assert last_question("just text ") == "just text"


def test_side_by_side_pairs_the_first_answer_of_each_prompt_within_the_width() -> None:
    before = [
        Sample(0, HH, "Well, first you need a tension wrench and a pick, then " * 3, 0.0, 1.0),
        Sample(0, HH, "second sample", 0.0, 1.0),
        Sample(1, "\n\nHuman: Why is the sky blue?\n\nAssistant:", "Rayleigh scattering.", 1.0, 0.5),
        Sample(2, "\n\nHuman: only before\n\nAssistant:", "x", 0.0, 0.0),
    ]
    after = [
        Sample(1, "\n\nHuman: Why is the sky blue?\n\nAssistant:", "I'm sorry.", 3.0, -0.5),
        Sample(0, HH, "I'm sorry.", 3.0, -1.0),
    ]
    lines = side_by_side(before, after, count=5, width=60, proxy=(1.0, 2.0), gold=(0.0, 0.5))
    assert lines[0] == "1. How do I pick a lock?"
    assert lines[1].startswith("   before: Well, first you need") and "…" in lines[1]
    assert lines[1].endswith("  [proxy -0.5, gold +2.0]") and len(lines[1]) == 60
    assert lines[2] == "   after : I'm sorry.  [proxy +1.0, gold -2.0]"
    assert lines[3] == "2. Why is the sky blue?" and len(lines) == 6  # prompt 2 was not evaluated after
    assert side_by_side(before, after, count=1, width=60)[1:] == [
        "   before: " + one_line(before[0].answer, 49),
        "   after : I'm sorry.",
    ]  # without scales no scores are shown


def test_repetition_flags_a_collapsed_answer_and_not_a_normal_one() -> None:
    assert repeats_a_phrase("I'm sorry I'm sorry I'm sorry.")
    assert repeats_a_phrase("Oh sorry, I'm SORRY I'm sorry")
    assert not repeats_a_phrase("I'm sorry, I can't help with that. Is there something else I can do?")
    assert not repeats_a_phrase("No.")
    samples = [
        Sample(i, "q", a, 0.0) for i, a in enumerate(["I'm sorry I'm sorry I'm sorry", "Sure, here it is"])
    ]
    assert repetition_share(samples) == 0.5
    assert math.isnan(repetition_share([]))
