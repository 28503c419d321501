"""deploy/k8s-gpu, the GPU overlay of deploy/k8s: its patches applied to the base validate against the
Kubernetes schemas, ask for one NVIDIA GPU per replica and configure the CUDA provider.

The patches are applied here with a small strategic merge (maps merge, lists of named items merge by
name, other lists are replaced: what these patches need); where kubectl is installed, its own
kustomize build of the overlay must give the same objects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import ServiceSettings
from tests.deploy.test_k8s import KUBERNETES_VERSION, container, resources

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "k8s-gpu"
GPU = "nvidia.com/gpu"


def load(name: str) -> dict[str, Any]:
    documents = list(yaml.safe_load_all((OVERLAY / name).read_text(encoding="utf-8")))
    assert len(documents) == 1, name
    return documents[0]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as far as these patches need it."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in patch.items()}}
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        patched = {item["name"]: item for item in patch}
        merged = [
            merge(item, patched.pop(item["name"])) if item["name"] in patched else item for item in base
        ]
        return merged + list(patched.values())
    return patch


def overlay_resources() -> dict[str, dict[str, Any]]:
    """The base's resources by kind, with the overlay's patches and image applied."""
    kustomization = load("kustomization.yaml")
    by_kind = {resource["kind"]: resource for resource in resources().values()}
    for entry in kustomization["patches"]:
        patch = load(entry["path"])
        kind = patch["kind"]
        assert patch["metadata"]["name"] == by_kind[kind]["metadata"]["name"], entry["path"]
        by_kind[kind] = merge(by_kind[kind], patch)
    (image,) = kustomization["images"]
    main = container(by_kind["Deployment"])
    assert main["image"].split(":")[0] == image["name"]
    main["image"] = f"{image['newName']}:{image['newTag']}"
    return by_kind


def test_the_overlay_builds_on_the_base_and_lists_every_patch() -> None:
    kustomization = load("kustomization.yaml")
    assert kustomization["resources"] == ["../k8s"]
    listed = {entry["path"] for entry in kustomization["patches"]}
    assert listed == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_patched_resources_validate_against_the_kubernetes_schema(version: str) -> None:
    for kind, resource in overlay_resources().items():
        kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "rlhf-reward", kind


def test_the_merge_can_fail_validation() -> None:
    """A misspelt field in a patch must reach the validator, not vanish in the merge."""
    deployment = overlay_resources()["Deployment"]
    broken = merge(deployment, {"spec": {"template": {"spec": {"tolerations": [{"keyy": GPU}]}}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_one_gpu_per_replica_on_tainted_gpu_nodes() -> None:
    deployment = overlay_resources()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert main["resources"]["limits"][GPU] == "1"  # an extended resource: the request equals the limit
    assert GPU not in main["resources"]["requests"]
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # everything else of the base (probes, drain, security, volumes) is kept by the merge
    base = container(resources()["deployment.yaml"])
    kept = ("readinessProbe", "livenessProbe", "startupProbe", "securityContext", "volumeMounts", "env")
    assert {field: main[field] for field in kept} == {field: base[field] for field in kept}
    assert main["image"] == "rlhf-reward-service-gpu:latest"


def test_the_configmap_asks_for_cuda_and_stays_a_valid_configuration() -> None:
    config = overlay_resources()["ConfigMap"]["data"]
    assert config["RLHF_PROVIDER"] == "cuda"
    settings = ServiceSettings(**{k.removeprefix("RLHF_").lower(): v for k, v in config.items()})
    assert settings.provider == "cuda" and settings.precision == "auto"  # auto on CUDA: fp16 when shipped


def test_the_autoscaler_ceiling_is_a_gpu_budget_above_the_disruption_floor() -> None:
    patched = overlay_resources()
    hpa, pdb = patched["HorizontalPodAutoscaler"], patched["PodDisruptionBudget"]
    base_hpa = resources()["hpa.yaml"]
    assert hpa["spec"]["maxReplicas"] < base_hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_kubectl_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the merge above stands in for kustomize")
    built = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    by_kind = {doc["kind"]: doc for doc in yaml.safe_load_all(built)}
    ours = overlay_resources()
    assert set(by_kind) == set(ours)
    for kind, resource in ours.items():
        theirs = by_kind[kind]
        theirs["metadata"]["labels"].pop("app.kubernetes.io/part-of")  # the base kustomization adds it
        assert theirs == resource, kind
