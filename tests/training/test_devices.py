from __future__ import annotations

import pytest
import torch

from training.devices import DeviceError, resolve_device
from training.policy.config import PolicyConfig
from training.policy.errors import PolicyTrainingError
from training.policy.policy import load_policy
from training.reward.config import ConfigError
from training.reward.distributed import setup_distributed


def test_auto_picks_what_this_machine_has() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_explicit_cpu_and_unknown_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="no GPU"):
        resolve_device("cuda")


def test_mps_is_kept_when_torch_can_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("auto") == torch.device("mps")


def test_mps_without_mps_is_an_error_not_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


def test_reward_training_uses_the_same_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu").device == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert setup_distributed("mps").device == torch.device("mps")  # was silently the CPU
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        setup_distributed("gpu0")


def test_policy_rejects_a_wrong_device_before_loading_a_model() -> None:
    with pytest.raises(PolicyTrainingError, match="unknown device 'gpu0'"):
        load_policy(PolicyConfig(device="gpu0", model="/nonexistent/model"))
