from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from training.reward.config import RewardConfig

runner = CliRunner()


def test_help_documents_every_option() -> None:
    result = runner.invoke(app, ["train-rm", "--help"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    # every flag the command had before its options were generated from RewardConfig
    for option in (
        "--data",
        "--out",
        "--base-model",
        "--max-steps",
        "--epochs",
        "--batch-size",
        "--lr",
        "--max-length",
        "--min-question-tokens",
        "--val-fraction",
        "--warmup-ratio",
        "--margin",
        "--center-coef",
        "--disable-dropout",
        "--keep-dropout",
        "--eval-every",
        "--device",
        "--num-workers",
        "--resume",
        "--quiet",
        "--seed",
        "--grad-accum",
        "--checkpoint-every",
    ):
        assert option in result.output, option
    for name in RewardConfig.help_texts():  # and one per field, so no knob is missing
        assert f"--{name.replace('_', '-')}" in result.output, name
    assert "Peak learning rate of AdamW. [default: 6e-05]" in result.output


def test_keep_dropout_and_resume_keeps_reach_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the options given reach the config; --resume accepts just the run-control ones."""
    import training.reward.train as train_module

    seen: list[tuple[RewardConfig, bool]] = []
    monkeypatch.setattr(
        train_module, "train", lambda config, out, resume, progress: seen.append((config, resume))
    )
    result = runner.invoke(app, ["train-rm", "--out", str(tmp_path), "--base-model", "x", "--keep-dropout"])
    assert result.exit_code == 0, result.output
    assert seen[-1][0].disable_dropout is False and seen[-1][0].lr == RewardConfig.lr
    result = runner.invoke(
        app, ["train-rm", "--out", str(tmp_path), "--resume", "--device", "cpu", "--num-workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert seen[-1][1] is True and seen[-1][0].device == "cpu" and seen[-1][0].num_workers == 1


def test_cli_module_imports_no_heavy_engine() -> None:
    """`rlhf --help` must stay instant: torch, transformers and onnxruntime load only when a command runs."""
    code = (
        "import sys, cli.main\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_refuses_conflicting_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train-rm", "--out", str(tmp_path), "--resume", "--lr", "0.1"])
    assert result.exit_code != 0
    assert "--lr" in result.output
    result = runner.invoke(app, ["train-rm", "--out", str(tmp_path), "--resume", "--keep-dropout"])
    assert result.exit_code != 0 and "--disable-dropout" in result.output


def test_bad_data_is_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n{oops\n')
    result = runner.invoke(
        app, ["train-rm", "--out", str(tmp_path / "o"), "--data", str(bad), "--base-model", str(tiny_model)]
    )
    assert result.exit_code == 2
    assert f"{bad}:2: invalid JSON" in result.output


def test_short_cli_run(tmp_path: Path, tiny_model: Path, pairs_file: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train-rm",
            "--out",
            str(out),
            "--data",
            str(pairs_file),
            "--base-model",
            str(tiny_model),
            "--max-steps",
            "2",
            "--max-length",
            "48",
            "--min-question-tokens",
            "8",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "final" / "reward_config.json").read_text())
    assert config["max_steps"] == 2 and config["max_length"] == 48 and config["batch_size"] == 8


@pytest.mark.parametrize("bad", [["--lr", "-1"], ["--val-fraction", "1.5"], ["--max-length", "4"]])
def test_invalid_values_are_rejected_before_training(tmp_path: Path, bad: list[str]) -> None:
    result = runner.invoke(app, ["train-rm", "--out", str(tmp_path), *bad], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "invalid RewardConfig value" in result.output
    assert f"Invalid value for {bad[0]}" in result.output  # the error names the flag to fix


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path, tiny_model: Path, pairs_file: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = runner.invoke(
        app,
        [
            "train-rm",
            "--out",
            str(tmp_path),
            "--data",
            str(pairs_file),
            "--base-model",
            str(tiny_model),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code == 2
    assert "asks for CUDA but torch sees no GPU" in result.output
