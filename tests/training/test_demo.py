"""The demo's own plumbing: the commands it shows, the validation file it writes, the service it runs."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from bench.procs import free_port
from tests.bundle_factory import make_tiny_bundle
from training.demo import (
    DemoError,
    DemoPaths,
    made_step,
    print_summary,
    reusable,
    rlhf,
    running_service,
    shown,
    write_val_pairs,
)
from training.reward.config import RewardConfig
from training.reward.data import load_run_split


def test_commands_are_shown_as_a_user_types_them() -> None:
    assert rlhf("eval", "--json")[:3] == [sys.executable, "-m", "cli.main"]
    assert shown(rlhf("export", "runs/rm", "--out", "b")) == "rlhf export runs/rm --out b"
    assert shown(["make", "test"]) == "make test"


def test_validation_pairs_file_is_the_runs_split(tmp_path: Path) -> None:
    config = RewardConfig(base_model="unused", val_fraction=0.05, seed=3)
    config.save(tmp_path / "reward_config.json")
    written = write_val_pairs(tmp_path, tmp_path / "val.jsonl.gz")
    _, val = load_run_split(tmp_path)
    with gzip.open(tmp_path / "val.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert written == len(val) == len(rows) > 0
    assert [(r["question"], r["chosen"], r["rejected"]) for r in rows] == [
        (p.question, p.chosen, p.rejected) for p in val
    ]


@pytest.mark.slow
def test_service_starts_scores_and_drains_on_exit(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    log = tmp_path / "service.log"
    with running_service(bundle, free_port(), log) as url:
        response = httpx.post(f"{url}/score", json={"pairs": [{"question": "q", "answer": "a"}]})
        assert response.status_code == 200
        assert len(response.json()["scores"]) == 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2.0)


def test_a_service_that_cannot_start_is_a_clear_demo_error(tmp_path: Path) -> None:
    with (
        pytest.raises(DemoError, match="exited with code"),
        running_service(tmp_path / "no-such-bundle", free_port(), tmp_path / "service.log"),
    ):
        pass


def _summary_inputs(tmp_path: Path) -> tuple[DemoPaths, dict, dict]:
    paths = DemoPaths(tmp_path)
    paths.bundle.mkdir(parents=True)
    manifest = {
        "name": "reward",
        "version": "1",
        "int8": {"shipped": True},
        "eval": {"accuracy_fp32": 0.635, "accuracy_int8": 0.62},
        "score": {"mean": 0.0, "std": 0.44},
    }
    (paths.bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    policy = {
        "before": {"mean_raw": -0.1, "mean_normalized": -0.23, "scored": 64, "mean_length": 34.5,
                   "median_length": 40, "eos_fraction": 0.25},
        "after": {"mean_raw": 0.16, "mean_normalized": 0.36, "scored": 64, "mean_length": 16.4,
                  "median_length": 6, "eos_fraction": 0.92},
        "gain_in_std": 0.59,
        "gain_se_in_std": 0.07,
        "greedy_gain_in_std": None,
        "kl_last": 6.7,
        "scoring_share_mean": 0.008,
    }  # fmt: skip
    return paths, {"pairs": 200, "accuracy": 0.62}, policy


def _write_samples(paths: DemoPaths, name: str, answers: list[str], gold: float) -> None:
    paths.policy_run.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": i, "question": f"\n\nHuman: question {i}?\n\nAssistant:", "answer": a, "length": 3,
         "score": 0.22 * i, "gold_score": gold}
        for i, a in enumerate(answers)
    ]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (paths.policy_run / f"eval_{name}_samples.jsonl").write_text(text, encoding="utf-8")


def test_summary_shows_the_gain_and_only_the_evaluations_that_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, eval_report, policy = _summary_inputs(tmp_path)
    print_summary(paths, eval_report, policy)
    out = capsys.readouterr().out
    assert "-0.23 → +0.36 std: +0.59 ± 0.07 (64 held-out samples" in out
    assert "34.5 → 16.4 tokens (median 40 → 6" in out
    assert "greedy" not in out and "gold" not in out and "nan" not in out
    assert re.search(
        r"pairwise accuracy \(served graph\) +62\.0%\n", out
    )  # no length figures given: none shown
    with_length = {**eval_report, "length_balanced_accuracy": 0.58, "length_pearson": -0.04}
    print_summary(paths, with_length, policy)
    assert "62.0% (length-balanced 58.0%, Pearson(score, answer tokens) -0.04)" in capsys.readouterr().out
    print_summary(paths, eval_report, {**policy, "greedy_gain_in_std": 0.4, "greedy_gain_se_in_std": 0.1})
    assert re.search(r"proxy gain \(greedy\) +\+0\.40 ± 0\.10", capsys.readouterr().out)


def test_summary_shows_the_gold_the_sorry_share_and_answers_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, eval_report, policy = _summary_inputs(tmp_path)
    gold_model = {
        "name": "gold", "version": "g1", "score": {"mean": 0.5, "std": 0.25},
        "length_correction": {"slope": -0.0123, "applied": True},
    }  # fmt: skip
    policy |= {"gold_model": gold_model, "gold_gain_in_std": -0.3, "gold_gain_se_in_std": 0.1,
               "verdict": "over-optimised: the proxy rose, the gold fell"}  # fmt: skip
    policy["before"] |= {"gold_mean_normalized": 0.1, "gold_length_pearson": 0.05, "length_pearson": -0.6}
    policy["after"] |= {"gold_mean_normalized": -0.2, "gold_length_pearson": 0.02, "length_pearson": -0.7}
    _write_samples(
        paths, "before", ["Well, you could try this and that.", "Sure.", "Let me see.", "ok"], 0.75
    )
    _write_samples(paths, "after", ["I'm sorry.", "I'm sorry, I can't.", "No.", "Sorry"], 0.25)
    print_summary(paths, eval_report, policy, gold_eval={"pairs": 200, "accuracy": 0.605}, examples=2)
    out = capsys.readouterr().out
    assert re.search(r"gold reward model \(never optimised\) +gold g1, length-corrected \(-0\.0123 per", out)
    assert "60.5% on its 200 validation pairs" in out
    assert "+0.10 → -0.20 std: -0.30 ± 0.10 (gold's own Pearson(score, length) +0.05 → +0.02" in out
    assert "proxy's -0.60 → -0.70" in out
    assert re.search(r"verdict +over-optimised: the proxy rose, the gold fell", out)
    assert re.search(r'answers containing "sorry" +0% → 75% \(4 held-out samples\)', out)
    examples = out[out.index("held-out prompts, first sampled answer") :].splitlines()
    assert examples[1:7] == [
        "1. question 0?",
        "   before: Well, you could try this and that.  [proxy +0.0, gold +1.0]",
        "   after : I'm sorry.  [proxy +0.0, gold -1.0]",
        "2. question 1?",
        "   before: Sure.  [proxy +0.5, gold +1.0]",
        "   after : I'm sorry, I can't.  [proxy +0.5, gold -1.0]",
    ]
    assert str(paths.policy_run / "eval_after_samples.jsonl") in out
    # every answer after at the token budget: no correlation with length exists, and none is printed as "+nan"
    policy["after"] |= {"gold_length_pearson": float("nan"), "length_pearson": None}
    print_summary(paths, eval_report, policy, gold_eval={"pairs": 200, "accuracy": 0.605}, examples=0)
    out = capsys.readouterr().out
    assert "Pearson(score, length) +0.05 → n/a; proxy's -0.60 → n/a)" in out and "nan" not in out


def test_a_finished_step_is_reused_only_with_the_options_it_was_made_with(tmp_path: Path) -> None:
    done = tmp_path / "final" / "model.safetensors"
    assert not reusable(tmp_path, done, ["--epochs", "1.0"], ["--epochs", "1.0"])  # nothing finished yet
    done.parent.mkdir()
    done.write_bytes(b"weights")
    # no record: an earlier demo's model, which was always made with the plain options
    assert reusable(tmp_path, done, ["--epochs", "1.0"], ["--epochs", "1.0"])
    assert not reusable(tmp_path, done, ["--epochs", "1.0", "--length-head"], ["--epochs", "1.0"])
    made = made_step("step", [sys.executable, "-c", "pass"], tmp_path, ["--length-head"], True, done)
    assert made  # the plain model was not reused for other options, and the step recorded its own
    assert reusable(tmp_path, done, ["--length-head"], [])
    assert not made_step("step", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, ["--length-head"],
                         True, done)  # fmt: skip
    with pytest.raises(DemoError, match="exit 3"):
        made_step(
            "step", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, ["--length-head"], False, done
        )


def _record_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make the demo record its `rlhf` commands instead of running them (a train or export leaves what
    --reuse looks for, an eval answers a report)."""
    import training.demo as demo

    ran: list[list[str]] = []

    def fake_step(title: str, command: list[str], capture: bool = False) -> str:
        args = command[len(rlhf()) :]
        ran.append(args)
        out = Path(args[args.index("--out") + 1]) if "--out" in args else None
        if args[0] == "train-rm" and out is not None:
            (out / "final").mkdir(parents=True, exist_ok=True)
            (out / "final" / "model.safetensors").write_bytes(b"w")
        elif args[0] == "export" and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.json").write_text("{}")
        return json.dumps({"pairs": 200, "accuracy": 0.6})

    monkeypatch.setattr(demo, "run_step", fake_step)
    monkeypatch.setattr(demo, "write_val_pairs", lambda run, out: 200)
    return ran


def test_default_gold_is_the_proxys_model_with_its_length_trend_subtracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.demo as demo

    ran = _record_commands(tmp_path, monkeypatch)
    paths = DemoPaths(tmp_path)
    options = demo.DemoOptions(rm_options=("--quality-heads", "4"), policy_uncertainty_penalty=0.5)
    eval_report, gold_eval = demo.build_models(paths, options)
    assert eval_report == gold_eval == {"pairs": 200, "accuracy": 0.6}
    commands = [" ".join(a) for a in ran]
    assert commands[0].startswith(f"train-rm --out {paths.reward_run} --epochs 1.0 --quality-heads 4")
    assert commands[1] == f"export {paths.reward_run} --out {paths.bundle} --overwrite"
    assert commands[3].startswith(f"export {paths.reward_run} --out {paths.gold_bundle}")  # no training
    assert "--length-correction" in commands[3] and "--no-int8" in commands[3]
    assert "--name gold-corrected-proxy" in commands[3] and len(commands) == 5  # + the two evaluations
    policy = " ".join(demo._policy_command(paths, "http://x", options)[len(rlhf()) :])
    assert f"--gold-bundle {paths.gold_bundle}" in policy and "--uncertainty-penalty 0.5" in policy
    ran.clear()
    demo.build_models(paths, options)  # --reuse: only the two evaluations run again
    assert [a[0] for a in ran] == ["eval", "eval"]
    ran.clear()
    demo.build_models(paths, demo.DemoOptions(rm_options=("--length-head",)))  # another proxy: its gold too
    assert [a[0] for a in ran] == ["train-rm", "export", "eval", "export", "eval"]
    off = demo.DemoOptions(gold="off")
    assert "--gold-bundle" not in demo._policy_command(paths, "http://x", off)


def test_other_seed_gold_is_trained_apart_and_evaluated_on_its_own_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.demo as demo

    ran = _record_commands(tmp_path, monkeypatch)
    paths = DemoPaths(tmp_path)
    options = demo.DemoOptions(gold="other-seed", gold_seed=7, gold_rm_options=("--length-head",))
    demo.build_models(paths, options)
    commands = [" ".join(a) for a in ran]
    assert commands[3].startswith(f"train-rm --out {paths.gold_run} --seed 7 --epochs 1.0 --max-length 256")
    assert commands[3].endswith("--length-head --device auto")
    assert commands[4].startswith(f"export {paths.gold_run} --out {paths.gold_bundle}")
    assert "--name gold-other-seed" in commands[4] and "--length-correction" in commands[4]
    assert commands[5].startswith(f"eval --bundle {paths.gold_bundle} --data {paths.gold_val_pairs}")
    ran.clear()
    demo.build_models(paths, options)
    assert [a[0] for a in ran] == ["eval", "eval"]
