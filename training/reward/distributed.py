"""One process, or one per device under `torchrun` / `accelerate launch`: which one am I, on what device.

Both launchers set WORLD_SIZE, RANK and LOCAL_RANK; without them this is a single process. The training
loop only needs the rank (who writes files), the world size (how batches are shared) and the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.devices import DeviceError, resolve_device
from training.reward.config import ConfigError


@dataclass
class DistEnv:
    """This process's rank, the number of processes, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistEnv:
    """Single process, or one process per device under torchrun / accelerate launch (WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        resolved = resolve_device(device)
    except DeviceError as err:
        raise ConfigError(str(err)) from err
    use_cuda = resolved.type == "cuda"
    if use_cuda:  # one process per GPU: without an index, each process takes its LOCAL_RANK's GPU
        resolved = torch.device("cuda", local_rank if resolved.index is None else resolved.index)
        torch.cuda.set_device(resolved)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, resolved)
