"""A run SIGKILLed mid-training and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_config
from training.reward.checkpoint import CheckpointError, load_checkpoint
from training.reward.train import train
from training.runlog import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _config(tiny_model: Path, pairs_file: Path):
    # epochs of 6 batches: the resumed part (steps 5-9) crosses an epoch boundary; dropout stays on
    return tiny_config(
        tiny_model,
        pairs_file,
        max_steps=9,
        checkpoint_every=4,
        eval_every=5,
        decay="cosine",
        disable_dropout=False,  # resume must reproduce dropout masks too
        warmup_ratio=0.2,
    )


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(
    tmp_path: Path, tiny_model: Path, pairs_file: Path
) -> None:
    config = _config(tiny_model, pairs_file)
    reference = tmp_path / "uninterrupted"
    train(config, reference, progress=False)

    killed = tmp_path / "killed"
    # a real process, really killed with SIGKILL after step 6 (checkpoint at step 4, steps 5-6 lost)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from training.reward.config import RewardConfig
        from training.reward.train import train
        config = RewardConfig.from_dict({config.to_dict()!r})
        def kill_at(step):
            if step == 6:
                os.kill(os.getpid(), signal.SIGKILL)
        train(config, {str(killed)!r}, on_step=kill_at, progress=False)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "final").exists()
    assert load_checkpoint(killed).step == 4
    assert max(r["step"] for r in read_jsonl(killed / "metrics.jsonl")) == 6

    train(config, killed, resume=True, progress=False)

    expected = load_file(str(reference / "final" / "model.safetensors"))
    resumed = load_file(str(killed / "final" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), f"{name} differs after resume"
    # the metrics log was cut back to the checkpoint and continued: every step once, same losses
    ref_steps = [(r["step"], r["loss"]) for r in read_jsonl(reference / "metrics.jsonl") if "loss" in r]
    res_steps = [(r["step"], r["loss"]) for r in read_jsonl(killed / "metrics.jsonl") if "loss" in r]
    assert res_steps == ref_steps


def test_resume_without_checkpoint_is_a_clear_error(
    tmp_path: Path, tiny_model: Path, pairs_file: Path
) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(_config(tiny_model, pairs_file), tmp_path / "nothing", resume=True, progress=False)


def test_a_kill_during_the_checkpoint_swap_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    """save_checkpoint renames checkpoint/ -> checkpoint.old/ before the new one moves in."""
    from training.reward.checkpoint import STATE_NAME, find_checkpoint
    from training.reward.config import CONFIG_NAME

    old = tmp_path / "checkpoint.old"
    old.mkdir()
    (old / STATE_NAME).write_bytes(b"x")
    (old / CONFIG_NAME).write_text("{}")
    (tmp_path / "checkpoint.tmp").mkdir()  # a half-written new checkpoint is never used
    assert find_checkpoint(tmp_path) == old
    new = tmp_path / "checkpoint"
    new.mkdir()
    (new / STATE_NAME).write_bytes(b"y")
    assert find_checkpoint(tmp_path) == old  # incomplete (no config yet): still the old one
    (new / CONFIG_NAME).write_text("{}")
    assert find_checkpoint(tmp_path) == new
