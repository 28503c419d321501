"""`rlhf compare`: finished policy runs side by side, written here as real run directories.

Two fake runs share a start; "plain" collapses to "I'm sorry." (the failure issue 13 is about) and
"odin" keeps its answers' length. The gold is a tiny real bundle that re-scores every sample.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.bundle_factory import make_tiny_bundle
from training.policy.compare import CompareError, compare_runs, load_run, parse_run_argument
from training.policy.compare_report import answer_lines, table_lines, write_outputs
from training.policy.evaluate import EvalResult, paired_standard_error
from training.policy.gold import GoldScorer
from training.policy.report import Sample
from training.policy.rescore import QUESTION_TAIL, gold_reading, restore_questions
from training.policy.scoring import rm_answer
from training.policy.summary import verdict

runner = CliRunner()
STORED_GOLD = {
    "name": "stored-gold",
    "version": "s1",
    "sha256": "ab" * 32,
    "score": {"mean": 0.0, "std": 2.0},
}
# long dialogues, so the samples keep only their tail and the full question must be recovered
QUESTIONS = [
    "\n\nHuman: "
    + f"Context {i}: "
    + "the weather was mild and the market was busy. " * 9
    + f"\n\nHuman: Question {i}?"
    "\n\nAssistant:"
    for i in range(4)
]
BEFORE = [
    "Here is a long and careful answer that explains the steps one by one so you can follow them",
    "A second answer with a similar number of words that covers the same question from another side",
]
AFTER = {
    "plain": [
        "I'm sorry.",
        "I\u2019m sorry I\u2019m sorry I\u2019m sorry.",
    ],  # collapsed: short, refusing, repeating
    "odin": [
        "Here is a careful answer that explains the main steps one by one so that you can follow",
        "Another answer of about the same length that covers the question from a different side",
    ],
}


def write_run(
    root: Path, name: str, prompts: Path, gold: dict | None = STORED_GOLD, penalty: float = 0.0
) -> Path:
    """A finished `train-policy --out` dir: 4 prompts x 2 samples before and after, consistent numbers."""
    run = root / name
    run.mkdir(parents=True)
    config = {"reward_key": "normalized", "uncertainty_penalty": penalty, "prompts_file": str(prompts),
              "reward_run": None, "steps": 3}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    evals = {}
    for when, answers, shift in (("before", BEFORE, 0.0), ("after", AFTER.get(name, AFTER["odin"]), 1.0)):
        rows = [
            {
                "prompt": p,
                "question": q[-QUESTION_TAIL:],
                "answer": a,
                "length": len(a.split()),
                "score": shift + 0.1 * p + 0.05 * k,
                "gold_score": 9.0,
            }
            for p, q in enumerate(QUESTIONS)
            for k, a in enumerate(answers)
        ]
        (run / f"eval_{when}_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lengths = [r["length"] for r in rows]
        scores = [r["score"] for r in rows]
        evals[when] = EvalResult(
            mean_raw=float(np.mean(scores)), mean_normalized=float(np.mean(scores)) / 0.5, scored=len(rows),
            failed=0, mean_length=float(np.mean(lengths)), median_length=float(np.median(lengths)),
            prompt_means=[shift + 0.1 * p + 0.025 for p in range(4)],
            gold_mean_normalized=0.1 if when == "before" else 0.4,
        )  # fmt: skip
        (run / f"eval_{when}.json").write_text(json.dumps(evals[when].to_dict()))
    summary = {
        "reward_model": {"name": f"rm-{name}", "version": "v1", "score_std": 0.5},
        "steps": 3,
        "gain_in_std": 2.0,
        "gain_se_in_std": 0.1,
        "kl_last": 1.5,
        **({"gold_model": gold, "gold_gain_in_std": 0.15, "gold_gain_se_in_std": 0.05} if gold else {}),
    }
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = [{"step": s, "proxy_mean": 0.1 * s, "gold_mean": 0.05 * s, "answer_length": 20 - s, "kl": 0.5 * s}
               for s in range(1, 4)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    return {
        "prompts": prompts,
        "plain": write_run(tmp_path / "runs", "plain", prompts),
        "odin": write_run(tmp_path / "runs", "odin", prompts, penalty=1.0),
        "gold": make_tiny_bundle(
            tmp_path / "gold",
            name="gold",
            version="g1",
            seed=3,
            score_mean=0.3,
            score_std=0.7,
            with_int8=False,
        ),
    }


def test_a_collapsed_run_shows_its_refusals_and_fails_the_length_check(files: dict[str, Path]) -> None:
    plain, odin = compare_runs([load_run(files["plain"]), load_run(files["odin"])]).rows
    assert plain.sorry_share == (0.0, 1.0)  # the typographic apostrophe counts too
    assert plain.repetition_share == (0.0, 0.5)
    assert plain.median_length == (18.0, 4.0)  # words stand in for tokens
    assert plain.length_within is False
    assert odin.length_within is True and odin.sorry_share == (0.0, 0.0)
    assert odin.optimised == "normalized score − 1·uncertainty" and plain.optimised == "normalized score"
    table = "\n".join(table_lines(compare_runs([load_run(files["plain"]), load_run(files["odin"])])))
    assert "| median within 30% of start     | no " in table and "0% → 100%" in table


def test_the_runs_stored_gold_serves_when_they_share_it(files: dict[str, Path]) -> None:
    comparison = compare_runs([load_run(files["plain"]), load_run(files["odin"])])
    gold = comparison.rows[0].gold
    assert (gold.before, gold.after, gold.gain, gold.gain_se) == (0.1, 0.4, 0.15, 0.05)
    assert comparison.gold is not None and comparison.gold["source"] == "as stored in the runs"
    assert comparison.rows[0].verdict == verdict({"gain_in_std": 2.0, "gain_se_in_std": 0.1,
                                                  "gold_gain_in_std": 0.15, "gold_gain_se_in_std": 0.05})  # fmt: skip


def test_runs_judged_by_different_golds_are_refused_without_a_gold_bundle(
    files: dict[str, Path], tmp_path: Path
) -> None:
    other = write_run(tmp_path / "more", "other", files["prompts"], gold={**STORED_GOLD, "version": "s2"})
    none = write_run(tmp_path / "more", "none", files["prompts"], gold=None)
    for odd in (other, none):
        with pytest.raises(CompareError, match=r"different golds.*--gold-bundle"):
            compare_runs([load_run(files["plain"]), load_run(odd)])
    gold = GoldScorer.load(files["gold"])
    assert compare_runs([load_run(files["plain"]), load_run(other), load_run(none)], gold).gold is not None
    alone = compare_runs([load_run(none)]).rows[0]  # no gold anywhere: said, not guessed
    assert math.isnan(alone.gold.gain) and alone.verdict.startswith("no gold reward")


def test_a_gold_bundle_rescores_every_sample_on_its_full_question(files: dict[str, Path]) -> None:
    gold = GoldScorer.load(files["gold"])
    comparison = compare_runs([load_run(files["plain"]), load_run(files["odin"])], gold, "gold")
    assert comparison.notes == []  # every question was found in the prompts file
    for row, name in zip(comparison.rows, ("plain", "odin"), strict=True):
        by_hand = {}
        for when, answers in (("before", BEFORE), ("after", AFTER[name])):
            raw = gold.score(
                [q for q in QUESTIONS for _ in answers], [rm_answer(a) for _ in QUESTIONS for a in answers]
            )
            by_hand[when] = raw.reshape(len(QUESTIONS), len(answers))
        gain = (by_hand["after"].mean() - by_hand["before"].mean()) / 0.7
        se = paired_standard_error(by_hand["before"].mean(axis=1), by_hand["after"].mean(axis=1)) / 0.7
        assert row.gold.gain == pytest.approx(gain, abs=1e-6)  # float32 graph, other batches
        assert row.gold.gain_se == pytest.approx(se, abs=1e-6)  # float32 graph, other batches
        assert row.gold.before == pytest.approx(
            (by_hand["before"].mean() - 0.3) / 0.7, abs=1e-6
        )  # float32 graph, other batches
        assert row.gold.gain != 0.15  # not the number stored in the run
    tails = gold.score([q[-QUESTION_TAIL:] for q in QUESTIONS], [rm_answer(BEFORE[0])] * len(QUESTIONS))
    fulls = gold.score(QUESTIONS, [rm_answer(BEFORE[0])] * len(QUESTIONS))
    assert np.abs(tails - fulls).max() > 1e-3  # the recovery matters: the tail alone scores differently
    assert comparison.gold is not None and comparison.gold["version"] == "g1"


def test_questions_are_recovered_only_when_the_tail_names_one(files: dict[str, Path]) -> None:
    cut = Sample(0, QUESTIONS[0][-QUESTION_TAIL:], "a", 0.0)
    short = Sample(1, "\n\nHuman: hi\n\nAssistant:", "b", 0.0)
    restored, left = restore_questions([cut, short], QUESTIONS)
    assert [s.question for s in restored] == [QUESTIONS[0], short.question] and left == 0
    twin = "\n\nHuman: another beginning." + QUESTIONS[0][-QUESTION_TAIL:]
    restored, left = restore_questions([cut, short], [*QUESTIONS, twin])  # ambiguous: kept as the tail
    assert restored[0].question == cut.question and left == 1
    assert restore_questions([cut], None) == ([cut], 1)  # the prompt source is gone


def test_a_sample_the_gold_could_not_score_yields_no_number_and_no_crash() -> None:
    before = [Sample(p, "q", "a", 0.0, gold_score=float(p)) for p in range(3)]
    after = [Sample(p, "q", "a", 0.0, gold_score=None) for p in range(3)]
    reading = gold_reading(before, after, 0.0, 1.0)
    assert reading.before == 1.0 and math.isnan(reading.gain) and math.isnan(reading.gain_se)


def test_unfinished_missing_or_unreadable_runs_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    (files["odin"] / "summary.json").unlink()
    with pytest.raises(CompareError, match=r"no summary\.json"):
        load_run(files["odin"])
    with pytest.raises(CompareError, match="no such run directory"):
        load_run(tmp_path / "nowhere")
    (files["plain"] / "eval_after.json").write_text("{not json")
    with pytest.raises(CompareError, match=r"eval_after\.json: unreadable"):
        load_run(files["plain"])
    (files["plain"] / "eval_after.json").unlink()
    with pytest.raises(CompareError, match=r"missing eval_after\.json"):
        load_run(files["plain"])


def test_labels_come_from_the_argument_or_the_directory(files: dict[str, Path]) -> None:
    assert parse_run_argument("a=runs/x") == ("a", Path("runs/x"))
    assert parse_run_argument("runs/pg-plain") == ("pg-plain", Path("runs/pg-plain"))
    run = load_run(files["plain"])
    with pytest.raises(CompareError, match="share a label"):
        compare_runs([run, run])


def test_outputs_hold_the_table_the_answers_and_the_curves(files: dict[str, Path], tmp_path: Path) -> None:
    gold = GoldScorer.load(files["gold"])
    comparison = compare_runs([load_run(files["plain"]), load_run(files["odin"])], gold, "gold")
    lines = answer_lines(comparison, count=2)
    assert len(lines) == 2 * (1 + 1 + 2)  # question, one shared "before", one "after" per run
    assert lines[2].startswith("   after plain") and "I'm sorry." in lines[2] and "gold" in lines[2]
    js, md, png = write_outputs(comparison, tmp_path / "out", count=2)
    saved = json.loads(js.read_text())
    assert [r["label"] for r in saved["runs"]] == ["plain", "odin"]
    assert saved["runs"][0]["length_within"] is False and saved["runs"][0]["sorry_share"] == [0.0, 1.0]
    assert saved["answers"][0]["after"]["plain"]["answer"] == "I'm sorry."
    text = md.read_text()
    assert (
        "| proxy optimised" in text
        and "I'm sorry." in text
        and "![proxy and gold per step](compare.png)" in text
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_command_prints_the_table_and_refuses_bad_input(files: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "compare",
        f"plain={files['plain']}",
        f"odin={files['odin']}",
        "--gold-bundle",
        str(files["gold"]),
    ]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--samples", "1"])
    assert result.exit_code == 0, result.output
    assert "median within 30% of start" in result.output and "I'm sorry." in result.output
    assert (tmp_path / "out" / "compare.md").is_file()
    (files["odin"] / "summary.json").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no summary.json" in result.output
    result = runner.invoke(app, ["compare", str(files["plain"]), "--gold-bundle", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "gold bundle" in result.output


def test_compare_imports_no_torch() -> None:
    modules = "cli.compare, training.policy.compare, training.policy.compare_report, training.policy.rescore"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.strip() == "False"
