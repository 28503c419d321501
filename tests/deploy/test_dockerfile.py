"""The Dockerfile's promises, checked without a Docker engine (the recipe itself runs in
test_image_recipe.py): torch-free builder, non-root runtime, healthcheck, env defaults the service
reads, a build context that holds what the COPY lines need, and hadolint's rules.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from service.settings import ServiceSettings
from tests.deploy.dockerfile import DOCKERFILE, ROOT, hadolint, parse

K8S = ROOT / "deploy" / "k8s"


def test_two_stages_on_slim_python_311() -> None:
    dockerfile = parse()
    assert [s.name for s in dockerfile.stages] == ["builder", "runtime"]
    assert {s.base for s in dockerfile.stages} == {"python:3.11-slim"}


def test_builder_installs_the_service_without_extras() -> None:
    builder = parse().stage("builder")
    runs = [run.args for run in builder.all("RUN")]
    assert runs == ["sh deploy/install-service.sh /opt/venv /src"]
    script = (ROOT / "deploy" / "install-service.sh").read_text(encoding="utf-8")
    pip_lines = [line for line in script.splitlines() if "pip install" in line and not line.startswith("#")]
    assert len(pip_lines) == 1
    assert "[" not in pip_lines[0] and "torch" not in pip_lines[0]  # no extras, no torch
    assert "find_spec('torch')" in script  # and the script refuses an install where torch slipped in


def test_runtime_is_non_root_with_healthcheck_and_service_cmd() -> None:
    runtime = parse().stage("runtime")
    (user,) = runtime.all("USER")
    uid, _, gid = user.args.partition(":")
    assert int(uid) != 0 and int(gid) != 0
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))
    # USER comes after every COPY/RUN that needs root
    keywords = [i.keyword for i in runtime.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in {"RUN", "COPY"})
    (copy_venv, *_) = runtime.all("COPY")
    assert copy_venv.args == "--from=builder /opt/venv /opt/venv"
    (cmd,) = runtime.all("CMD")
    assert cmd.exec_form() == ["python", "-m", "service"]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    probe = healthcheck.exec_form()
    assert probe is not None and probe[:2] == ["python", "-c"] and "/healthz" in probe[2]
    assert [e.args for e in runtime.all("EXPOSE")] == ["8000"]


def test_runtime_env_defaults_are_service_settings() -> None:
    runtime = parse().stage("runtime")
    env = runtime.env()
    settings_env = {f"RLHF_{name.upper()}" for name in ServiceSettings.model_fields}
    rlhf = {k: v for k, v in env.items() if k.startswith("RLHF_")}
    assert set(rlhf) <= settings_env, set(rlhf) - settings_env
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert rlhf["RLHF_HOST"] == "0.0.0.0" and rlhf["RLHF_PORT"] == "8000"
    assert Path(rlhf["RLHF_BUNDLE"]).parent == Path(rlhf["RLHF_BUNDLE_ROOT"])
    volumes = [v.args for v in runtime.all("VOLUME")]
    assert volumes == ['["/bundles"]'] and rlhf["RLHF_BUNDLE_ROOT"] == "/bundles"
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    cpu_request = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert rlhf["RLHF_INTRA_OP_THREADS"] == cpu_request
    ServiceSettings(**{k.removeprefix("RLHF_").lower(): v for k, v in rlhf.items()})  # a valid config


def test_build_context_holds_every_copied_path() -> None:
    dockerfile = parse()
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "**" in ignore  # an allowlist: nothing enters the context unless named
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    (bundle_arg,) = [
        a.args for a in dockerfile.stage("runtime").all("ARG") if a.args.startswith("BUNDLE_DIR=")
    ]
    no_bundle = bundle_arg.partition("=")[2]
    sources = []
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from"):
                continue
            words = [w for w in copy.args.split() if not w.startswith("--")]
            sources += [no_bundle if w == "${BUNDLE_DIR}" else w for w in words[:-1]]  # last = destination
    assert "pyproject.toml" in sources and no_bundle in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is .dockerignored"
    assert "bundles" in allowed  # --build-arg BUNDLE_DIR=bundles/NAME bakes a bundle in
    assert not (ROOT / no_bundle / "manifest.json").exists()


def test_hadolint_passes() -> None:
    code, report = hadolint(DOCKERFILE)
    assert code == 0, report
