"""deploy/Dockerfile.gpu, checked without Docker or a GPU: the CPU image's recipe on a CUDA base, with
onnxruntime swapped for onnxruntime-gpu and the pairing checked at build time.

The CPU image's own recipe is replayed for real in test_image_recipe.py; the GPU one cannot be here
(its wheel needs CUDA to be of any use), so this test holds the GPU file to the CPU file line by line
where they must agree, and checks what only the GPU file does.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from service.providers import CUDA_PROVIDER, GPU_PACKAGE
from service.settings import ServiceSettings
from tests.deploy.dockerfile import ROOT, Dockerfile, hadolint, parse

GPU_DOCKERFILE = ROOT / "deploy" / "Dockerfile.gpu"
K8S = ROOT / "deploy" / "k8s"


def gpu() -> Dockerfile:
    return parse(GPU_DOCKERFILE)


def test_two_stages_on_one_cuda_cudnn_runtime_image() -> None:
    dockerfile = gpu()
    assert [s.name for s in dockerfile.stages] == ["builder", "runtime"]
    (base,) = {s.base for s in dockerfile.stages}  # the venv's python3 is the same in both stages
    assert base == dockerfile.global_args["CUDA_IMAGE"]
    image, _, tag = base.partition(":")
    assert image == "nvidia/cuda" and "-cudnn-runtime-" in tag  # cuDNN: onnxruntime's CUDA provider needs it
    assert dockerfile.global_args["ONNXRUNTIME_GPU_VERSION"].count(".") == 2  # a pinned release


def test_builder_copies_what_the_cpu_image_copies_then_swaps_onnxruntime() -> None:
    builder, cpu_builder = gpu().stage("builder"), parse().stage("builder")
    assert [c.args for c in builder.all("COPY")] == [c.args for c in cpu_builder.all("COPY")]
    assert [w.args for w in builder.all("WORKDIR")] == [w.args for w in cpu_builder.all("WORKDIR")]
    install = [run.args for run in builder.all("RUN") if "install-service.sh" in run.args]
    assert len(install) == 1
    steps = [step.strip() for step in install[0].split("&&")]
    (cpu_run,) = [run.args for run in cpu_builder.all("RUN")]
    # the CPU image's install (Ubuntu names its interpreter python3), then the swap, then the check
    assert steps[0] == f"PYTHON=python3 {cpu_run}"
    assert steps[1] == "/opt/venv/bin/python -m pip uninstall --yes --quiet onnxruntime"
    pinned = f'"{GPU_PACKAGE}==${{ONNXRUNTIME_GPU_VERSION}}"'
    assert steps[2] == f"/opt/venv/bin/python -m pip install --quiet {pinned}"
    assert steps[3] == "/opt/venv/bin/python -P -m service.providers"  # -P: the installed package
    assert "ONNXRUNTIME_GPU_VERSION" in [a.args for a in builder.all("ARG")]  # visible inside the stage


def test_the_build_check_fails_on_an_installation_without_cuda() -> None:
    """What the builder's last step runs: here, on the CPU wheel, it must refuse and name the package."""
    result = subprocess.run(
        [sys.executable, "-P", "-m", "service.providers"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if CUDA_PROVIDER in result.stdout.splitlines()[1]:
        return  # a machine with onnxruntime-gpu: the check's verdict depends on its CUDA, not tested here
    assert result.returncode == 1
    assert GPU_PACKAGE in result.stderr and CUDA_PROVIDER in result.stderr


def test_runtime_matches_the_cpu_image_but_for_the_provider() -> None:
    runtime, cpu_runtime = gpu().stage("runtime"), parse().stage("runtime")
    env, cpu_env = runtime.env(), cpu_runtime.env()
    assert env.pop("RLHF_PROVIDER") == "cuda"  # refuse to start rather than serve on the CPU
    assert env == cpu_env
    settings = {k.removeprefix("RLHF_").lower(): v for k, v in runtime.env().items() if k.startswith("RLHF_")}
    assert ServiceSettings.model_validate(settings).provider == "cuda"  # every variable is a setting
    for keyword in ("USER", "CMD", "HEALTHCHECK", "EXPOSE", "VOLUME"):
        assert [i.args for i in runtime.all(keyword)] == [i.args for i in cpu_runtime.all(keyword)], keyword
    copies = runtime.all("COPY")
    assert [c.args for c in copies] == [c.args for c in cpu_runtime.all("COPY")]
    bundle_args = [a.args for a in runtime.all("ARG")]
    assert bundle_args == [a.args for a in cpu_runtime.all("ARG")] == ["BUNDLE_DIR=deploy/no-bundle"]
    keywords = [i.keyword for i in runtime.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in {"RUN", "COPY"})
    (user_setup,) = runtime.all("RUN")
    assert "useradd --system --uid 10001" in user_setup.args and "apt-get install" in user_setup.args
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert runtime.all("USER")[0].args == f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"


def test_apt_lists_are_removed_in_the_layer_that_fetched_them() -> None:
    for stage in gpu().stages:
        for run in stage.all("RUN"):
            if "apt-get update" in run.args:
                assert "--no-install-recommends" in run.args and "rm -rf /var/lib/apt/lists/*" in run.args


def test_every_copied_path_is_in_the_build_context() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for stage in gpu().stages:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from"):
                continue
            words = [w for w in copy.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                source = "deploy/no-bundle" if source == "${BUNDLE_DIR}" else source
                assert (ROOT / source).exists(), source
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_the_header_documents_the_build_command_and_the_k8s_image_name() -> None:
    header = GPU_DOCKERFILE.read_text(encoding="utf-8").split("\n\n")[0]
    assert "docker build -f deploy/Dockerfile.gpu -t rlhf-reward-service-gpu ." in header
    assert "--gpus all" in header
    overlay = yaml.safe_load((ROOT / "deploy" / "k8s-gpu" / "kustomization.yaml").read_text(encoding="utf-8"))
    (image,) = overlay["images"]
    assert image["newName"] == "rlhf-reward-service-gpu"


def test_hadolint_passes() -> None:
    code, report = hadolint(GPU_DOCKERFILE)
    assert code == 0, report
