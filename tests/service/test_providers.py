"""`rlhf serve --provider auto|cpu|cuda`: which onnxruntime providers run the graph, and the refusals.

No GPU here: the CUDA build is simulated by making `onnxruntime.get_available_providers()` list
CUDAExecutionProvider. The CPU build then opens the session on CPU anyway (onnxruntime warns and falls
back, exactly as the GPU build does on a node where CUDA cannot start), which is the fallback path.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from service.app import create_app
from service.backend import BackendLoadError, OnnxBackend, ProviderFallback
from service.bundle import BundleError, load_bundle
from service.model import ModelLoadError, load_model
from service.providers import (
    CPU_ONLY,
    CPU_PROVIDER,
    CUDA_PROVIDER,
    GPU_PACKAGE,
    ProviderUnavailable,
    gpu_build_problems,
    resolve_providers,
)
from service.server import preflight
from service.settings import ServiceSettings
from tests.bundle_factory import INPUT_NAMES, make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for

# the CPU build warns when asked for CUDA, then falls back: that fallback is what these tests exercise
pytestmark = pytest.mark.filterwarnings("ignore:Specified provider .CUDAExecutionProvider.:UserWarning")

ROOT = Path(__file__).resolve().parents[2]
CPU_BUILD = [CPU_PROVIDER]  # what the `onnxruntime` wheel lists (plus others that do not matter here)
GPU_BUILD = ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]  # the `onnxruntime-gpu` wheel


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu installed, on a node where CUDA cannot start (sessions fall back to CPU)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_BUILD))


@pytest.fixture
def cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CPU_BUILD))


def test_cpu_is_cpu_only_whatever_is_installed(gpu_build: None) -> None:
    chosen = resolve_providers("cpu")
    assert chosen == CPU_ONLY and chosen.names == (CPU_PROVIDER,) and chosen.device == "cpu"
    assert not chosen.strict


def test_auto_prefers_cuda_when_the_gpu_build_lists_it(gpu_build: None) -> None:
    chosen = resolve_providers("auto")
    assert chosen.names == (CUDA_PROVIDER, CPU_PROVIDER)  # CPU stays for nodes CUDA has no kernel for
    assert chosen.device == "cuda" and not chosen.strict


def test_auto_is_cpu_on_the_cpu_build(cpu_build: None) -> None:
    chosen = resolve_providers("auto")
    assert chosen.names == (CPU_PROVIDER,) and chosen.device == "cpu" and chosen.choice == "auto"


def test_cuda_needs_the_gpu_package(cpu_build: None) -> None:
    with pytest.raises(ProviderUnavailable, match=GPU_PACKAGE) as info:
        resolve_providers("cuda")
    assert CUDA_PROVIDER in str(info.value) and "--provider cpu" in str(info.value)


def test_cuda_with_the_gpu_package_is_strict(gpu_build: None) -> None:
    chosen = resolve_providers("cuda")
    assert chosen.names == (CUDA_PROVIDER, CPU_PROVIDER) and chosen.strict and chosen.device == "cuda"


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_providers("rocm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="provider"):
        ServiceSettings(provider="rocm")  # type: ignore[arg-type]


def test_the_setting_comes_from_the_environment_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app

    assert ServiceSettings().provider == "auto"  # one image serves on CPU and GPU nodes
    monkeypatch.setenv("RLHF_PROVIDER", "cpu")
    assert ServiceSettings().provider == "cpu"
    assert ServiceSettings(provider="cuda").provider == "cuda"  # a flag beats the environment
    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--provider" in shown and "auto | cpu | cuda" in shown and "RLHF_PROVIDER" in shown


def test_the_gpu_build_check_names_what_is_wrong() -> None:
    """`python -m service.providers`, which deploy/Dockerfile.gpu runs: the pairings it must refuse."""
    assert gpu_build_problems(GPU_BUILD, "13.0", "13.0.1") == []
    assert gpu_build_problems(GPU_BUILD, "13.0", None) == []  # image CUDA unknown: nothing to compare
    (missing,) = gpu_build_problems(CPU_BUILD, "", "13.0.1")
    assert GPU_PACKAGE in missing and CUDA_PROVIDER in missing
    (mismatch,) = gpu_build_problems(GPU_BUILD, "12.8", "13.0.1")
    assert "built for CUDA 12.8" in mismatch and "CUDA 12.x base image" in mismatch


def test_the_backend_reports_the_provider_it_runs_on(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    backend = OnnxBackend(bundle / "model.onnx", INPUT_NAMES, 1)
    assert backend.provider == CPU_PROVIDER and backend.session.get_providers() == [CPU_PROVIDER]


def test_cuda_asked_by_name_never_serves_on_cpu(tmp_path: Path, gpu_build: None) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    with pytest.raises(ProviderFallback, match=r"not CUDAExecutionProvider.*--provider auto or cpu"):
        OnnxBackend(bundle / "model.onnx", INPUT_NAMES, 1, resolve_providers("cuda"))
    assert issubclass(ProviderFallback, BackendLoadError)  # load_model turns it into a refused model


def test_auto_falls_back_to_cpu_and_says_so(
    tmp_path: Path, gpu_build: None, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    with caplog.at_level(logging.WARNING, logger="service.backend"):
        backend = OnnxBackend(bundle / "model.onnx", INPUT_NAMES, 1, resolve_providers("auto"))
    assert backend.provider == CPU_PROVIDER
    assert "serving on CPU" in caplog.text and CUDA_PROVIDER in caplog.text


def test_preflight_refuses_cuda_without_the_gpu_package(tmp_path: Path, cpu_build: None) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    for configured in (bundle, None):  # before the bundle is even read
        with pytest.raises(ProviderUnavailable, match=GPU_PACKAGE):
            preflight(settings_for(configured, provider="cuda"))
    preflight(settings_for(bundle, provider="auto"))
    preflight(settings_for(bundle, provider="cpu"))


def test_preflight_refuses_cuda_that_cannot_start(tmp_path: Path, gpu_build: None) -> None:
    """The GPU build on a node without a usable GPU: only opening the graph tells, so preflight does."""
    bundle = make_tiny_bundle(tmp_path / "rm")
    with pytest.raises(ProviderUnavailable, match="could not start"):
        preflight(settings_for(bundle, provider="cuda"))
    preflight(settings_for(bundle, provider="auto"))  # auto serves on CPU instead


def test_preflight_refuses_a_precision_the_bundle_lacks(tmp_path: Path) -> None:
    fp32_only = make_tiny_bundle(tmp_path / "rm", with_int8=False)
    with pytest.raises(BundleError, match="has no int8 graph"):
        preflight(settings_for(fp32_only, precision="int8"))
    with pytest.raises(BundleError, match=r"has no fp16 graph .*--fp16"):
        preflight(settings_for(fp32_only, precision="fp16"))


def test_rlhf_serve_names_the_package_and_exits_2(tmp_path: Path, cpu_build: None) -> None:
    from cli.main import app

    bundle = make_tiny_bundle(tmp_path / "rm")
    result = CliRunner().invoke(app, ["serve", "--bundle", str(bundle), "--provider", "cuda"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and GPU_PACKAGE in result.output


def test_python_m_service_names_the_package_and_exits_2(tmp_path: Path) -> None:
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu: the refusal cannot happen here")
    bundle = make_tiny_bundle(tmp_path / "rm")
    env = {**os.environ, "RLHF_BUNDLE": str(bundle), "RLHF_PROVIDER": "cuda", "RLHF_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and GPU_PACKAGE in result.stderr


def test_a_model_on_a_fallen_back_cuda_session_is_refused(tmp_path: Path, gpu_build: None) -> None:
    """A reload under --provider cuda goes through the same check: the old model keeps serving."""
    from service.backend import OnnxBackendFactory

    bundle = make_tiny_bundle(tmp_path / "rm")
    with pytest.raises(ModelLoadError, match="could not start"):
        load_model(bundle, "auto", 1, OnnxBackendFactory(resolve_providers("cuda")), device="cuda")


def test_auto_precision_follows_the_device(tmp_path: Path) -> None:
    both = load_bundle(make_tiny_bundle(tmp_path / "both"))
    assert both.default_precision() == both.default_precision("cpu") == "int8"
    assert both.default_precision("cuda") == "fp32"  # int8 QDQ kernels are CPU ones; no fp16 graph here


def test_v1_models_and_metrics_report_the_provider(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    with LiveServer(create_app(settings_for(bundle, provider="cpu"))) as server:
        (summary,) = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert summary["provider"] == CPU_PROVIDER and summary["precision"] == "int8"
        text = httpx.get(f"{server.url}/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "rlhf_provider_info"]
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"provider": CPU_PROVIDER, "requested": "cpu"}, 1.0)
    ]


def test_auto_on_a_gpu_build_without_a_gpu_serves_on_cpu(tmp_path: Path, gpu_build: None) -> None:
    bundle = make_tiny_bundle(tmp_path / "rm")
    with LiveServer(create_app(settings_for(bundle))) as server:
        (summary,) = httpx.get(f"{server.url}/v1/models").json()["data"]
        scored = httpx.post(f"{server.url}/score", json={"pairs": [{"question": "q", "answer": "a"}]})
        text = httpx.get(f"{server.url}/metrics").text
    # chosen for CUDA (no fp16 graph: fp32), run on CPU; the metric shows what was asked and what runs
    assert summary["provider"] == CPU_PROVIDER and summary["precision"] == "fp32"
    assert scored.status_code == 200
    assert 'rlhf_provider_info{provider="CPUExecutionProvider",requested="auto"} 1.0' in text


def test_an_app_asked_for_cuda_without_it_does_not_build(cpu_build: None) -> None:
    with pytest.raises(ProviderUnavailable, match=GPU_PACKAGE):
        create_app(ServiceSettings(provider="cuda"))
