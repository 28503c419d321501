"""Atomic training checkpoints that a SIGKILL cannot corrupt, loaded without unpickling code.

A checkpoint is a directory ``OUT/checkpoint/``::

    config.json, model.safetensors   the model (save_pretrained; transformers 5 writes safetensors)
    reward_config.json               the RewardConfig of the run
    tokenizer.json                   the fast tokenizer the run encodes with
    trainer_state.pt                 {"optimizer": state_dict, "step": int, "micro_batches": int,
                                      "rng_cpu": ByteTensor}: tensors and plain containers only,
                                      read back with ``torch.load(weights_only=True)``

It is written into ``checkpoint.tmp`` and renamed into place (the previous one is moved to
``checkpoint.old`` first and removed last), so at any instant one complete checkpoint exists:
a run killed mid-write resumes from the previous one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from training.reward.config import CONFIG_NAME, RewardConfig

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


@dataclass
class Checkpoint:
    path: Path
    config: RewardConfig
    state: dict[str, Any]  # the trainer_state.pt dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def save_checkpoint(
    out_dir: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    config: RewardConfig,
    tokenizer_json: Path,
    step: int,
    micro_batches: int,
) -> Path:
    """Write OUT/checkpoint/ atomically (temp dir + rename). Call on rank 0 only."""
    final = out_dir / CHECKPOINT_DIR
    tmp = out_dir / f"{CHECKPOINT_DIR}.tmp"
    old = out_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    config.save(tmp / CONFIG_NAME)
    shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
    state = {
        "optimizer": optimizer.state_dict(),
        "step": step,
        "micro_batches": micro_batches,
        "rng_cpu": torch.get_rng_state(),
    }
    torch.save(state, tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path:
    """The newest complete checkpoint: checkpoint/, or checkpoint.old/ if a kill hit the swap."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = out_dir / name
        if (candidate / STATE_NAME).is_file() and (candidate / CONFIG_NAME).is_file():
            return candidate
    raise CheckpointError(f"no checkpoint to resume from in {out_dir} (expected {out_dir / CHECKPOINT_DIR})")


def load_checkpoint(out_dir: Path) -> Checkpoint:
    path = find_checkpoint(out_dir)
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    return Checkpoint(path, RewardConfig.load(path / CONFIG_NAME), state)
