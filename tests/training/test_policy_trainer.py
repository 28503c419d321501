"""The RL loop end to end against the real scoring service (tiny bundle, real socket), with a tiny
policy: metrics/plots/checkpoint/summary, resume, masked failures, the two stop rules."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from service.app import create_app
from service.client import AsyncRewardClient
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.policy_helpers import (
    FlakyTransport,
    SwitchTransport,
    make_tiny_policy_dir,
    tiny_config,
    write_prompts,
)
from training.policy.config import PolicyConfig
from training.policy.errors import CheckpointError, RewardModelChanged, TooManyFailedRewards
from training.policy.trainer import train, train_async
from training.runlog import read_jsonl

REQUIRED_KEYS = {
    "reward_mean", "reward_std", "kl", "entropy", "answer_length", "failed_rewards", "gen_seconds",
    "score_seconds", "update_seconds", "step_seconds", "scoring_share", "rm_version",
}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trainer")
    return {
        "model": make_tiny_policy_dir(root / "model"),
        "prompts": write_prompts(root / "prompts.jsonl"),
        "rm1": make_tiny_bundle(root / "rm-v1", version="1", seed=0, score_mean=0.5, score_std=2.0),
        "rm2": make_tiny_bundle(root / "rm-v2", version="2", seed=1),
    }


@pytest.fixture(scope="module")
def service(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["rm1"]))) as server:
        yield server


@pytest.fixture(scope="module")
def service_v2(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["rm2"]))) as server:
        yield server


def _config(files: dict[str, Path], out: Path, url: str, **overrides: object) -> PolicyConfig:
    return tiny_config(files["model"], out, files["prompts"], service_urls=[url], **overrides)


def test_run_writes_metrics_plot_checkpoint_adapter_and_before_after(
    files: dict[str, Path], service: LiveServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    summary = train(_config(files, out, service.url, steps=2, merge=True, eval_greedy=True))
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert set(r) >= REQUIRED_KEYS
        assert r["failed_rewards"] == 0 and r["usable_answers"] == 4
        assert 0 < r["scoring_share"] < 1 and r["rm_version"] == "1"
        assert r["answer_length"] >= 1 and r["entropy"] > 0
    assert (out / "curves.png").stat().st_size > 1000
    assert {p.name for p in (out / "checkpoint").iterdir()} >= {
        "trainable.safetensors",
        "optimizer.pt",
        "state.json",
    }
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "config.json").is_file()
    before, after = summary["before"], summary["after"]
    assert before["scored"] == after["scored"] == 4 and before["failed"] == 0  # 2 prompts x 2 samples
    # normalised by the manifest's score mean 0.5 / std 2.0 (served by /v1/models)
    assert before["mean_normalized"] == pytest.approx((before["mean_raw"] - 0.5) / 2.0)
    assert summary["gain_in_std"] == pytest.approx((after["mean_raw"] - before["mean_raw"]) / 2.0)
    assert len((out / "eval_before_samples.jsonl").read_text().splitlines()) == 4
    assert len(before["prompt_means"]) == 2 and 0 <= before["eos_fraction"] <= 1
    assert math.isfinite(summary["gain_se_in_std"])
    # greedy: one deterministic answer per held-out prompt, before and after
    assert summary["before_greedy"]["scored"] == summary["after_greedy"]["scored"] == 2
    assert summary["greedy_gain_in_std"] == pytest.approx(
        (summary["after_greedy"]["mean_raw"] - summary["before_greedy"]["mean_raw"]) / 2.0
    )
    assert len((out / "eval_after_greedy_samples.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["k"] == 2 and "api_key" not in saved


def test_resume_continues_exactly_like_an_uninterrupted_run(
    files: dict[str, Path], service: LiveServer, tmp_path: Path
) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_config(files, straight, service.url, steps=3, skip_eval=True))
    train(_config(files, split, service.url, steps=2, skip_eval=True))
    train(_config(files, split, service.url, steps=3, skip_eval=True, resume=True))
    a = load_file(str(straight / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(split / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name
    assert [r["step"] for r in read_jsonl(split / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="lr"):
        train(_config(files, split, service.url, steps=4, skip_eval=True, resume=True, lr=1e-3))
    with pytest.raises(CheckpointError, match="lacks"):
        train(_config(files, tmp_path / "nothing", service.url, steps=1, skip_eval=True, resume=True))


def _train_with(config: PolicyConfig, url: str, transport: httpx.AsyncBaseTransport) -> dict:
    """Train with a client whose transport injects faults (created and closed in the run's loop)."""

    async def main() -> dict:
        async with AsyncRewardClient(url, max_retries=0, transport=transport) as client:
            return await train_async(config, client=client)

    return asyncio.run(main())


def test_failed_rewards_are_masked_and_the_run_continues(
    files: dict[str, Path], service: LiveServer, tmp_path: Path
) -> None:
    cfg = _config(files, tmp_path, service.url, steps=3, skip_eval=True, max_failed_fraction=0.6)
    _train_with(cfg, service.url, FlakyTransport(fail_every=3))  # every 3rd scoring request fails
    records = read_jsonl(tmp_path / "metrics.jsonl")
    failed = [r for r in records if r["failed_rewards"]]
    assert failed, "no request failed: the test injected nothing"
    for r in failed:  # a failed group (k=2) is left out of the loss, the other group still trains
        assert r["failed_rewards"] == 2 and r["usable_answers"] == 2
        assert r["reward_mean"] is not None and math.isfinite(r["reward_mean"])


def test_too_many_failures_stop_the_run_with_a_clear_message(
    files: dict[str, Path], service: LiveServer, tmp_path: Path
) -> None:
    cfg = _config(files, tmp_path, service.url, steps=2, skip_eval=True)
    with pytest.raises(TooManyFailedRewards, match=r"step 1: 4 of 4 rewards could not be fetched"):
        _train_with(cfg, service.url, FlakyTransport(fail_every=1))


def test_reward_model_change_stops_unless_allowed(
    files: dict[str, Path], service: LiveServer, service_v2: LiveServer, tmp_path: Path
) -> None:
    cfg = _config(files, tmp_path / "a", service.url, steps=3, skip_eval=True)
    with pytest.raises(RewardModelChanged, match="from version 1 to 2"):
        _train_with(cfg, service.url, SwitchTransport(service_v2.url, after=2))  # step 2 is scored by v2
    cfg = _config(files, tmp_path / "b", service.url, steps=3, skip_eval=True, allow_model_change=True)
    _train_with(cfg, service.url, SwitchTransport(service_v2.url, after=2))
    assert [r["rm_version"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == ["1", "2", "2"]


def test_adaptive_kl_coefficient_follows_the_kl_and_survives_resume(
    files: dict[str, Path], service: LiveServer, tmp_path: Path
) -> None:
    """A target far below the measured KL raises beta every step; resume carries beta on, not the flag."""
    config = {"skip_eval": True, "kl_coef": 0.1, "kl_target": 1e-6, "kl_adapt_rate": 0.5, "lr": 0.05}
    train(_config(files, tmp_path / "straight", service.url, steps=3, **config))
    records = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    betas = [r["kl_coef"] for r in records]
    assert betas[0] == 0.1
    for before, after, r in zip(betas, betas[1:], records, strict=False):
        expected = before * 1.1 if r["kl"] > 1e-6 else before * 0.9  # error clipped to +-0.2, rate 0.5
        assert after == pytest.approx(expected)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples the reference itself
    assert records[1]["kl"] > 1e-6 and betas[2] > betas[1]  # then the policy has moved: beta rises
    train(_config(files, tmp_path / "split", service.url, steps=2, **config))
    train(_config(files, tmp_path / "split", service.url, steps=3, resume=True, **config))
    assert [r["kl_coef"] for r in read_jsonl(tmp_path / "split" / "metrics.jsonl")] == pytest.approx(betas)
