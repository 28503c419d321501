"""Device names as users type them (`auto`, `cpu`, `cuda`, `cuda:1`, `mps`) → a torch.device.

`auto` picks a GPU when torch sees one, so the same command runs on a laptop and on a GPU box.
This is the only resolver: reward training (`training.reward.distributed`) and the policy both call
it, so a name means the same device everywhere, and a device this machine lacks is an error rather
than a silent fall-back to the CPU.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine; the message says what does."""


def resolve_device(name: str) -> torch.device:
    """The torch.device for ``name``; DeviceError when it is unknown or absent on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asks for CUDA but torch sees no GPU (use cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            f"device {name!r} asks for Apple MPS but torch cannot use it here (use cpu or auto)"
        )
    return device
