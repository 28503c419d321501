"""`rlhf train-policy`: every option documented, a real short run through the CLI, clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.policy_helpers import make_tiny_policy_dir, write_prompts
from training.policy.config import PolicyConfig

runner = CliRunner()
OPTIONS = [  # every flag the command had before its options were generated from PolicyConfig
    "--service", "--prompts", "--reward-run", "--steps", "--out", "--estimator", "--baseline", "--ppo-epochs",
    "--clip-eps", "--kl-coef", "--kl-target", "--kl-adapt-rate", "--gamma", "--normalize-advantages",
    "--no-normalize-advantages", "--entropy-coef", "--k", "--prompts-per-step", "--max-new-tokens",
    "--temperature", "--top-p", "--lr", "--max-grad-norm", "--lora-r", "--lora-alpha", "--lora-target-modules",
    "--full-finetune", "--model", "--gguf-file", "--device", "--seed", "--eval-prompts", "--eval-samples",
    "--eval-greedy", "--no-eval-greedy", "--skip-eval", "--reward-key", "--max-failed-fraction",
    "--allow-model-change", "--checkpoint-every", "--resume", "--merge", "--api-key", "--request-timeout",
    "--max-retries", "--gen-threads", "--generation-batch-prompts", "--train-threads", "--max-prompt-tokens",
]  # fmt: skip


def test_help_lists_every_option() -> None:
    result = runner.invoke(app, ["train-policy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in OPTIONS:
        assert option in result.output, option
    for name in PolicyConfig.help_texts():  # one flag per field: no knob is missing
        assert f"--{name.replace('_', '-')}" in result.output, name
    assert "Run control (may change on --resume)" in result.output


def test_flags_reach_the_config_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept flag names, the comma-separated module list, the env var of the key; untouched fields keep defaults."""
    import training.policy.trainer as trainer

    seen: list[PolicyConfig] = []
    monkeypatch.setattr(trainer, "train", lambda config: seen.append(config) or {})
    monkeypatch.setenv("RLHF_API_KEY", "s3cret")
    args = ["train-policy", "--service", "http://a", "--service", "http://b", "--prompts", "p.jsonl",
            "--lora-target-modules", "q_proj, v_proj", "--full-finetune", "--out", str(tmp_path), "--k", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = seen[-1]
    assert config.service_urls == ["http://a", "http://b"] and config.prompts_file == "p.jsonl"
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.full_finetune and config.k == 2
    assert config.out == str(tmp_path) and config.api_key == "s3cret"
    assert config.lr == PolicyConfig.lr and config.lora_target_modules != PolicyConfig().lora_target_modules
    result = runner.invoke(app, ["train-policy", "--service", "http://a"])
    assert result.exit_code == 0, result.output
    assert seen[-1].lora_target_modules == ["all-linear"] and seen[-1].out == PolicyConfig.out


def test_short_run_through_the_cli(tmp_path: Path) -> None:
    model = make_tiny_policy_dir(tmp_path / "model")
    prompts = write_prompts(tmp_path / "p.jsonl")
    bundle = make_tiny_bundle(tmp_path / "rm", version="3")
    gold = make_tiny_bundle(tmp_path / "gold", name="gold", version="g", seed=4)
    out = tmp_path / "run"
    with LiveServer(create_app(settings_for(bundle))) as server:
        args = ["train-policy", "--service", server.url, "--model", str(model), "--prompts", str(prompts),
                "--steps", "2", "--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                "--eval-prompts", "2", "--eval-samples", "1", "--lora-r", "4", "--out", str(out),
                "--estimator", "group_norm", "--kl-coef", "0.05", "--ppo-epochs", "2",
                "--gold-bundle", str(gold), "--gold-threads", "1"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        # a penalty asked of a bundle without an ensemble: a clear error before any work
        result_penalty = runner.invoke(
            app, [*args, "--uncertainty-penalty", "0.5", "--out", str(tmp_path / "p")]
        )
    assert "held-out reward:" in result.output and "RM score std" in result.output
    assert "gold reward:" in result.output and "gold std" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward_model"]["version"] == "3"
    assert summary["gold_model"]["version"] == "g"
    assert result_penalty.exit_code == 1 and "--quality-heads" in result_penalty.output


def test_bad_options_and_unreachable_service_fail_clearly(tmp_path: Path) -> None:
    wide = {"COLUMNS": "300"}
    result = runner.invoke(app, ["train-policy", "--service", "http://x", "--estimator", "a2c"], env=wide)
    assert result.exit_code == 2 and "Invalid value for --estimator" in result.output
    assert "estimator='a2c': must be one of rloo" in result.output
    result = runner.invoke(app, ["train-policy", "--service", "http://x", "--k", "1"], env=wide)
    assert result.exit_code == 2 and "needs k >= 2" in result.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    model = make_tiny_policy_dir(tmp_path / "model")
    args = ["train-policy", "--service", dead, "--model", str(model), "--prompts",
            str(write_prompts(tmp_path / "p.jsonl")), "--max-retries", "0", "--out", str(tmp_path / "o")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "error:" in result.output and "/v1/models" in result.output
