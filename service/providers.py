"""Which onnxruntime execution providers run the graphs: `rlhf serve --provider auto|cpu|cuda`.

    providers = resolve_providers("auto")   # CUDA first when onnxruntime-gpu is installed, else CPU
    session = make_session(path, providers=providers.names)

Why a choice at all: one image and one code path serve on a CPU node and on a GPU node. The CPU
wheel (`onnxruntime`) has no CUDA provider; the GPU wheel (`onnxruntime-gpu`, which replaces it) lists
``CUDAExecutionProvider`` in `onnxruntime.get_available_providers()` whether or not a GPU and its
CUDA/cuDNN libraries are present. So:

- ``cpu``: CPU only, whatever is installed (what the export gate, `rlhf eval` and the policy's gold
  scoring always use, so their numbers never depend on the machine);
- ``cuda``: CUDA or nothing. Without the CUDA provider the service refuses to start
  (:class:`ProviderUnavailable`, naming the package); when the provider is there but cannot start
  (no GPU, missing libraries), onnxruntime falls back to CPU on its own, and the backend refuses that
  session (`service.backend.OnnxBackend`), so a pod meant for a GPU never serves slowly on CPU;
- ``auto``: CUDA when the provider is listed, else CPU; a session that falls back is served on CPU
  and the provider in use is reported (/v1/models, `rlhf_provider_info`).

CPU stays listed after CUDA: nodes the CUDA provider has no kernel for run on CPU inside the same
session (onnxruntime places them), which is ordinary and not a fallback.

`python -m service.providers` prints what this installation can run on and exits 1 when it cannot
use CUDA (no CUDA provider, or an onnxruntime-gpu built for another CUDA major version than the
image's ``CUDA_VERSION``): deploy/Dockerfile.gpu runs it so a wrong pairing fails the build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ProviderChoice = Literal["auto", "cpu", "cuda"]
Device = Literal["cpu", "cuda"]
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GPU_PACKAGE = "onnxruntime-gpu"


class ProviderUnavailable(Exception):
    """The execution provider that was asked for cannot run here; the message says what to install."""


@dataclass(frozen=True)
class ExecutionProviders:
    """The providers a session is opened with, in preference order, and the choice they came from."""

    choice: ProviderChoice
    names: tuple[str, ...]

    @property
    def device(self) -> Device:
        """Where the graph is meant to run: it decides what ``--precision auto`` picks."""
        return "cuda" if self.names[0] == CUDA_PROVIDER else "cpu"

    @property
    def strict(self) -> bool:
        """True when the first provider was asked for by name: running on another is an error."""
        return self.choice == "cuda"


CPU_ONLY = ExecutionProviders("cpu", (CPU_PROVIDER,))


def resolve_providers(choice: ProviderChoice) -> ExecutionProviders:
    """The providers for ``choice`` on this installation; ProviderUnavailable for ``cuda`` without
    the CUDA provider. Cheap (no session is opened): `service.server.preflight` calls it at start."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"provider must be auto, cpu or cuda, got {choice!r}")
    if choice == "cpu":
        return CPU_ONLY
    import onnxruntime as ort  # here, not at import: the CLI and settings import this module cheaply

    available = ort.get_available_providers()
    if CUDA_PROVIDER in available:
        return ExecutionProviders(choice, (CUDA_PROVIDER, CPU_PROVIDER))
    if choice == "cuda":
        raise ProviderUnavailable(
            f"--provider cuda needs onnxruntime's {CUDA_PROVIDER}, which this onnxruntime "
            f"{ort.__version__} does not have (available: {', '.join(available)}). Install the GPU "
            f"build in its place: pip uninstall -y onnxruntime && pip install {GPU_PACKAGE} "
            "(deploy/Dockerfile.gpu does this), or serve with --provider cpu"
        )
    return ExecutionProviders(choice, (CPU_PROVIDER,))


def gpu_build_problems(available: Sequence[str], built_cuda: str, image_cuda: str | None) -> list[str]:
    """Why this onnxruntime cannot serve on CUDA here: [] when it can. ``built_cuda``: the CUDA version
    the installed onnxruntime-gpu was built with ("" for the CPU build); ``image_cuda``: the CUDA of the
    image (nvidia/cuda images set ``CUDA_VERSION``), None when unknown. CUDA keeps compatibility
    within a major version only, so the majors must agree."""
    problems = []
    if CUDA_PROVIDER not in available:
        problems.append(
            f"onnxruntime has no {CUDA_PROVIDER} (available: {', '.join(available)}): "
            f"install {GPU_PACKAGE} in place of onnxruntime"
        )
    built_major, image_major = built_cuda.split(".")[0], (image_cuda or "").split(".")[0]
    if built_major and image_major and built_major != image_major:
        problems.append(
            f"{GPU_PACKAGE} was built for CUDA {built_cuda} but this image has CUDA {image_cuda}: "
            f"use a CUDA {built_major}.x base image, or the {GPU_PACKAGE} version built for CUDA {image_major}"
        )
    return problems


def main() -> int:
    """`python -m service.providers`: report, and exit 1 with the problems when CUDA is out of reach."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    built_cuda = str(getattr(ort, "cuda_version", "") or "")
    image_cuda = os.environ.get("CUDA_VERSION")
    print(f"onnxruntime {ort.__version__} ({getattr(ort, 'package_name', 'onnxruntime')})")
    print(f"available providers: {', '.join(available)}")
    print(f"built for CUDA: {built_cuda or '-'}; image CUDA_VERSION: {image_cuda or '-'}")
    problems = gpu_build_problems(available, built_cuda, image_cuda)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
