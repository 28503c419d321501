"""The Docker image's recipe, replayed without Docker: install, then serve with torch not importable.

No Docker engine exists on these machines, so this test performs the image's steps itself, read from
the Dockerfile rather than copied from it: the builder stage's COPY lines fill a scratch build context,
its RUN lines run there (deploy/install-service.sh: a fresh venv, `pip install .` with no extras), and
the runtime stage's ENV, CMD and HEALTHCHECK start and probe the service from that venv on a loopback
port with a tiny real bundle. Differences from a real build, on purpose: the absolute paths of the
image (/opt/venv, /src) map into a temporary directory, the service binds 127.0.0.1 instead of
0.0.0.0, and pip may reuse this machine's wheel cache (the image sets PIP_NO_CACHE_DIR) so the test
stays fast; it still needs PyPI for pip's index look-ups.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.procs import free_port
from tests.bundle_factory import make_tiny_bundle
from tests.deploy.dockerfile import ROOT, Dockerfile, parse

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 600


@dataclass
class Image:
    """The replayed image: its paths mapped into a scratch directory, and its runtime stage."""

    dockerfile: Dockerfile
    paths: dict[str, Path]  # absolute path in the image -> path here
    python: Path

    def local(self, text: str) -> str:
        for image_path, local_path in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(image_path, str(local_path))
        return text

    def runtime_env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RLHF_", "PYTHON", "VIRTUAL_ENV"))}
        for key, value in self.dockerfile.stage("runtime").env().items():
            env[key] = self.local(value).replace("$PATH", os.environ["PATH"])
        env.update(overrides)
        return env


def build(scratch: Path) -> Image:
    dockerfile = parse()
    builder = dockerfile.stage("builder")
    (workdir,) = [w.args for w in builder.all("WORKDIR")]
    paths = {workdir: scratch / "src", "/opt/venv": scratch / "opt-venv"}
    image = Image(dockerfile, paths, scratch / "opt-venv" / "bin" / "python")
    context = paths[workdir]
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")  # as .dockerignore
    for copy in builder.all("COPY"):
        *sources, destination = copy.args.split()
        target = context / destination if not destination.startswith("/") else Path(image.local(destination))
        for source in sources:  # Docker's rules: a directory's contents go to dest; a file to dest/ or dest
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, target, ignore=ignore, dirs_exist_ok=True)
                continue
            dst = target / src.name if destination.endswith("/") else target
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_NO_CACHE", "VIRTUAL_ENV", "RLHF_"))}
    env.update({k: v for k, v in builder.env().items() if k != "PIP_NO_CACHE_DIR"})
    env["PYTHON"] = sys.executable  # `python` of python:3.11-slim; the venv is made from this interpreter
    for run in builder.all("RUN"):
        result = subprocess.run(
            ["sh", "-c", image.local(run.args)],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"RUN {run.args} failed:\n{result.stdout}\n{result.stderr}"
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    assert sys.version_info[:2] == (3, 11), "the image runs python:3.11-slim"
    yield build(tmp_path_factory.mktemp("image"))


def run_in(image: Image, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(image.python), "-c", code], cwd="/", capture_output=True, text=True, timeout=120, check=False
    )


def test_torch_is_not_importable_in_the_image(image: Image) -> None:
    result = run_in(image, "import torch")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
    for heavy in ("transformers", "peft", "onnx"):  # the train extra stayed out
        assert run_in(image, f"import {heavy}").returncode != 0, heavy
    located = run_in(image, "import service, onnxruntime; print(service.__file__)")
    assert located.returncode == 0, located.stderr
    assert Path(located.stdout.strip()).is_relative_to(image.paths["/opt/venv"])  # installed, not the repo


def test_image_serves_a_bundle_and_its_healthcheck_works(image: Image, tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundles" / "current", version="7")
    port = free_port()
    env = image.runtime_env(
        RLHF_BUNDLE=str(bundle),
        RLHF_BUNDLE_ROOT=str(bundle.parent),
        RLHF_HOST="127.0.0.1",
        RLHF_PORT=str(port),
    )
    runtime = image.dockerfile.stage("runtime")
    (cmd,) = runtime.all("CMD")
    (healthcheck,) = runtime.all("HEALTHCHECK")
    probe = healthcheck.exec_form()
    command = cmd.exec_form()
    assert command == ["python", "-m", "service"] and probe is not None
    assert shutil.which("python", path=env["PATH"]) == str(image.python)  # PATH puts the venv first
    log = (tmp_path / "service.log").open("w+")
    process = subprocess.Popen(command, cwd="/", env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the service exited with {process.returncode}:\n{log.read()}")
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "not ready within 60 s"
                time.sleep(0.2)
            health = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
            assert health.returncode == 0, health.stderr
            assert http.get("/healthz").status_code == 200
            pairs = [{"question": "How do I boil an egg?", "answer": "Simmer it for eight minutes."}] * 2
            response = http.post("/score", json={"pairs": pairs})
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["scores"]) == 2 and all(math.isfinite(s) for s in body["scores"])
            assert body["scores"][0] == body["scores"][1]
            assert body["model"] == {"name": "tiny-rm", "version": "7"}
            assert response.headers["X-Model-Version"] == "7"
            metrics = http.get("/metrics").text
            assert 'rlhf_requests_total{route="/score",status="200"} 1.0' in metrics
            assert "rlhf_ready 1.0" in metrics
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends; the service drains and exits
        assert process.wait(timeout=30) == 0
        after = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
        assert after.returncode != 0  # the healthcheck notices a dead service
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_image_without_a_bundle_exits_with_the_reason(image: Image) -> None:
    """The default BUNDLE_DIR (deploy/no-bundle) holds no model: the container must say so and stop."""
    runtime = image.dockerfile.stage("runtime")
    args = dict(a.args.partition("=")[::2] for a in runtime.all("ARG"))
    env = image.runtime_env(RLHF_BUNDLE=str(ROOT / args["BUNDLE_DIR"]), RLHF_HOST="127.0.0.1", RLHF_PORT="0")
    (cmd,) = runtime.all("CMD")
    result = subprocess.run(
        cmd.exec_form() or [], cwd="/", env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "manifest.json is missing" in result.stderr
