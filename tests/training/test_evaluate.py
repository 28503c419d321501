"""`rlhf eval` and `rlhf bench quant` on tiny real bundles (onnxruntime, the real tokenizer, no torch)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.quant import run_bench
from cli.main import app
from service.bundle import load_bundle
from service.encoding import pad_batch
from service.onnx_scoring import length_sorted_batches, make_session, run_scores
from tests.bundle_factory import make_tiny_bundle
from training.reward.data import PreferencePair
from training.reward.evaluate import evaluate_bundle, evaluate_scores, pairwise_accuracy

LONG = " ".join(f"word{i}" for i in range(300))  # far beyond the tiny bundle's max_length of 128


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("eval") / "rm")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl.gz"
    rows = [
        {
            "question": f"Question {i}?",
            "chosen": f"answer {i} " * (i % 5 + 1),
            "rejected": f"other {i} " * (i % 3 + 1),
        }
        for i in range(30)
    ]
    rows.append({"question": LONG, "chosen": "short", "rejected": LONG})
    rows.append({"question": "Same?", "chosen": "same", "rejected": "same"})  # skipped: no preference
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_pairwise_accuracy_counts_ties_as_wrong() -> None:
    assert pairwise_accuracy(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0])) == 0.5
    with pytest.raises(ValueError, match="zero pairs"):
        pairwise_accuracy(np.array([]), np.array([]))


def test_metrics_on_hand_computed_scores() -> None:
    pairs = [
        PreferencePair("q", "longer answer", "short"),  # chosen longer, right
        PreferencePair("q", "long answer", "x"),  # chosen longer, wrong
        PreferencePair("q", "a", "much longer"),  # chosen shorter, right
        PreferencePair("q", "same", "size"),  # equal length: in neither length group
    ]
    metrics = evaluate_scores(
        pairs, np.array([2.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.5, 1.0]), [True, False, False, False]
    )
    assert metrics["accuracy"] == 0.5  # the tie is wrong
    assert metrics["mean_margin"] == pytest.approx((1.0 - 1.0 + 0.5 + 0.0) / 4)
    assert (metrics["truncated"], metrics["truncation_rate"]) == (1, 0.25)
    assert (metrics["chosen_longer"].pairs, metrics["chosen_longer"].accuracy) == (2, 0.5)
    assert (metrics["chosen_shorter"].pairs, metrics["chosen_shorter"].accuracy) == (1, 1.0)
    assert metrics["length_balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["shorter_wins_accuracy"] == 0.25  # right on the one chosen-shorter pair; the tie is wrong


def test_length_balanced_accuracy_ignores_the_skew_of_the_test_set() -> None:
    # 3 of 4 unequal pairs have the shorter answer chosen: "shorter wins" is 75% right overall, and a
    # length rule is worth exactly 50% once the two groups weigh the same
    pairs = [
        PreferencePair("q", "a", "much longer"),
        PreferencePair("q", "b", "much longer"),
        PreferencePair("q", "c", "much longer"),
        PreferencePair("q", "much longer", "d"),
    ]
    lengths = np.array([len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs], dtype=float)
    short_is_better = -lengths  # the pure length rule as a reward model
    metrics = evaluate_scores(pairs, short_is_better[:4], short_is_better[4:], [False] * 4)
    assert metrics["accuracy"] == metrics["shorter_wins_accuracy"] == 0.75
    assert metrics["length_balanced_accuracy"] == 0.5
    one_group = evaluate_scores(pairs[:3], short_is_better[:3], short_is_better[4:7], [False] * 3)
    assert one_group["length_balanced_accuracy"] is None  # no chosen-longer pair: undefined, not 100%


def test_evaluate_bundle_matches_scoring_by_hand(bundle_dir: Path, data_file: Path) -> None:
    report = evaluate_bundle(bundle_dir, data_file, "fp32", batch_size=4)
    assert (report.pairs, report.skipped, report.skipped_reasons) == (31, 1, {"identical_answers": 1})
    assert report.truncated == 1 and report.precision == "fp32"

    bundle = load_bundle(bundle_dir)
    encoder = bundle.encoder()
    from training.reward.data import load_pairs

    pairs = load_pairs(data_file).pairs
    session = make_session(bundle.model_path("fp32"))
    names = bundle.manifest.input_names
    chosen = [
        run_scores(session, names, pad_batch([encoder.encode_one(p.question, p.chosen)], 0))[0] for p in pairs
    ]
    rejected = [
        run_scores(session, names, pad_batch([encoder.encode_one(p.question, p.rejected)], 0))[0]
        for p in pairs
    ]
    assert report.accuracy == pytest.approx(float(np.mean(np.array(chosen) > np.array(rejected))))
    assert report.mean_margin == pytest.approx(
        float(np.mean(np.array(chosen) - np.array(rejected))), abs=1e-6
    )


def test_default_precision_is_int8_when_shipped_and_limit(bundle_dir: Path, data_file: Path) -> None:
    report = evaluate_bundle(bundle_dir, data_file, limit=10)
    assert report.precision == "int8" and report.pairs == 10


def test_cli_eval_json_is_one_object_with_the_contract_keys(bundle_dir: Path, data_file: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", "--bundle", str(bundle_dir), "--data", str(data_file), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"accuracy", "pairs", "skipped", "truncated", "mean_margin", "truncation_rate"} <= set(report)
    assert {"chosen_longer", "chosen_shorter", "length_balanced_accuracy", "shorter_wins_accuracy"} <= set(
        report
    )
    longer, shorter = report["chosen_longer"]["accuracy"], report["chosen_shorter"]["accuracy"]
    assert report["length_balanced_accuracy"] == pytest.approx((longer + shorter) / 2)

    text = CliRunner().invoke(app, ["eval", "--bundle", str(bundle_dir), "--data", str(data_file)])
    assert text.exit_code == 0 and "accuracy" in text.output and "chosen longer" in text.output
    assert "length-balanced accuracy" in text.output


def test_cli_eval_errors_name_the_problem(bundle_dir: Path, tmp_path: Path, data_file: Path) -> None:
    runner = CliRunner()
    fp32_only = make_tiny_bundle(tmp_path / "fp32", with_int8=False)
    result = runner.invoke(
        app, ["eval", "--bundle", str(fp32_only), "--data", str(data_file), "--precision", "int8"]
    )
    assert result.exit_code == 1 and "has no int8 graph" in result.output
    result = runner.invoke(app, ["eval", "--bundle", str(tmp_path / "none"), "--data", str(data_file)])
    assert result.exit_code == 1 and "does not exist" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n{broken\n')
    result = runner.invoke(app, ["eval", "--bundle", str(bundle_dir), "--data", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl:2: invalid JSON" in result.output
    result = runner.invoke(app, ["eval", "--bundle", str(bundle_dir), "--precision", "fp16"])
    assert result.exit_code == 1 and "has no fp16 graph" in result.output  # tests/cli/test_eval_fp16.py


def test_eval_and_bench_never_import_torch(bundle_dir: Path, data_file: Path) -> None:
    code = (
        "import sys\n"
        "from training.reward.evaluate import evaluate_bundle\n"
        "from bench.quant import run_bench\n"
        f"evaluate_bundle({str(bundle_dir)!r}, {str(data_file)!r}, limit=4)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_length_sorted_batches_cover_every_index_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_bench_quant_reports_both_precisions_and_ratios(bundle_dir: Path, data_file: Path) -> None:
    result = run_bench(bundle_dir, data_file, pairs=12, batch_size=4, threads=1, repeats=1)
    assert {(r.precision, r.order) for r in result.rows} == {
        (p, o) for p in ("fp32", "int8") for o in ("sorted", "arrival")
    }
    assert result.pairs == 12 and all(r.pairs_per_s > 0 for r in result.rows)
    assert result.int8_speedup > 0 and result.sorting_speedup_fp32 > 0
    assert "int8 / fp32" in result.format_table()


def test_cli_eval_against_reports_the_paired_difference_on_a_runs_validation_split(
    bundle_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    from training.reward.config import CONFIG_NAME, RewardConfig
    from training.reward.data import load_pairs, split_pairs

    run = tmp_path / "run"
    run.mkdir()
    RewardConfig(data=str(data_file), val_fraction=0.5, seed=3).save(run / CONFIG_NAME)
    _, val = split_pairs(load_pairs(data_file).pairs, 0.5, 3)
    other = make_tiny_bundle(tmp_path / "other", seed=1, with_int8=False)

    result = CliRunner().invoke(
        app, ["eval", "--bundle", str(other), "--against", str(bundle_dir), "--split-of", str(run), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    first, second = out["reports"]
    assert first["pairs"] == second["pairs"] == len(val) and "validation split" in first["data"]
    paired = out["paired"]
    gain = 100 * (first["accuracy"] - second["accuracy"])
    assert paired["gain_points"] == pytest.approx(gain)
    assert paired["only_other_right"] - paired["only_reference_right"] == round(gain * len(val) / 100)
    assert paired["se_points"] >= 0 and "correct" not in first

    text = CliRunner().invoke(app, ["eval", "--bundle", str(other), "--against", str(bundle_dir)])
    assert text.exit_code == 0 and "paired s.e." in text.output
    both = CliRunner().invoke(
        app, ["eval", "--bundle", str(other), "--data", str(data_file), "--split-of", str(run)]
    )
    assert both.exit_code != 0 and "not both" in both.output
