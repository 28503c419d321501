"""Checkpoint and resume: trainable weights, optimizer, step, RNG, baseline, config, RM version.

    out/checkpoint/
        trainable.safetensors   the parameters that train (the LoRA adapter, or all weights)
        optimizer.pt            AdamW state (tensors and numbers only: loaded with weights_only=True)
        rng.pt                  torch CPU RNG state (the sampler's randomness)
        state.json              step, moving-average baseline, adaptive KL beta, RM name/version,
                                the gold bundle's sha256 (its per-step numbers must stay comparable), config

Written to a temporary directory and renamed, so a crash mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.policy.config import RESUMABLE_CHANGES, PolicyConfig
from training.policy.errors import CheckpointError
from training.policy.policy import Policy

FILES = ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")


@dataclass
class TrainState:
    step: int  # steps completed
    baseline_value: float | None
    rm_name: str
    rm_version: str
    kl_coef: float  # this step's KL beta: config.kl_coef, or where the adaptive controller moved it
    gold_sha256: str | None = None  # the gold bundle the run is measured against (None: no gold)


def save_checkpoint(
    directory: Path, policy: Policy, optimizer: torch.optim.Optimizer, state: TrainState, config: PolicyConfig
) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {
        n: p.detach().cpu().contiguous() for n, p in policy.model.named_parameters() if p.requires_grad
    }
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    body = {
        "step": state.step,
        "baseline_value": state.baseline_value,
        "rm_name": state.rm_name,
        "rm_version": state.rm_version,
        "kl_coef": state.kl_coef,
        "gold_sha256": state.gold_sha256,
        "config": config.to_dict(),
    }
    (tmp / "state.json").write_text(json.dumps(body, indent=2), encoding="utf-8")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    directory: Path, policy: Policy, optimizer: torch.optim.Optimizer, config: PolicyConfig
) -> TrainState:
    """Restore everything saved by save_checkpoint; refuse a checkpoint of a different configuration."""
    missing = [f for f in FILES if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(
            f"cannot resume: {directory} lacks {missing} (was the run started with this --out?)"
        )
    body: dict[str, Any] = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    saved, current = body["config"], config.to_dict()
    differing = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in differing)
        raise CheckpointError(f"cannot resume {directory} with a different configuration ({details})")
    weights = load_file(str(directory / "trainable.safetensors"))
    params = dict(policy.model.named_parameters())
    unknown = [n for n in weights if n not in params]
    absent = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if unknown or absent:
        raise CheckpointError(
            f"checkpoint weights do not match the model: unknown {unknown[:3]}, absent {absent[:3]}"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(directory / "rng.pt", weights_only=True))
    return TrainState(
        int(body["step"]),
        body["baseline_value"],
        str(body["rm_name"]),
        str(body["rm_version"]),
        float(body.get("kl_coef", config.kl_coef)),  # absent before the adaptive controller
        body.get("gold_sha256"),  # absent before the gold reward: those runs had none
    )
