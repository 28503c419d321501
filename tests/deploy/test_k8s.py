"""deploy/k8s validates against the Kubernetes OpenAPI schemas and its parts agree with each other.

Schemas come from the `kubernetes-validate` package (bundled JSON schemas, no network), strict mode:
an unknown or misspelt field fails. The cross-checks catch what a schema cannot: a probe on the wrong
path, a grace period shorter than the drain, a selector that matches no pod, an env var the service
does not read.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import ServiceSettings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest version we promise; also checked against the newest bundled


def load(name: str) -> dict[str, Any]:
    documents = list(yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")))
    assert len(documents) == 1, name
    return documents[0]


def resources() -> dict[str, dict[str, Any]]:
    kustomization = load("kustomization.yaml")
    return {name: load(name) for name in kustomization["resources"]}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def setting_env_names() -> set[str]:
    return {f"RLHF_{name.upper()}" for name in ServiceSettings.model_fields}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load("kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    kinds = set()
    for name, resource in resources().items():
        kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError
        kinds.add(resource["kind"])
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "rlhf-reward", name
    required = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "ConfigMap",
    }
    assert required <= kinds


def test_validator_rejects_a_broken_deployment() -> None:
    """The schema check must be able to fail: a misspelt field and a wrong type are refused."""
    deployment = load("deployment.yaml")
    misspelt = copy.deepcopy(deployment)
    container(misspelt)["readinesProbe"] = container(misspelt).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_probes_drain_and_security_context() -> None:
    deployment = load("deployment.yaml")
    config = load("configmap.yaml")["data"]
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert port_names["http"] == int(config["RLHF_PORT"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert main[probe]["httpGet"]["port"] in port_names
    # SIGKILL must not cut the drain short: grace > preStop sleep + RLHF_DRAIN_SECONDS
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + float(config["RLHF_DRAIN_SECONDS"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # threads = CPU request, so one replica uses the core it asked for and the HPA's ratio means something
    assert main["resources"]["requests"]["cpu"] == config["RLHF_INTRA_OP_THREADS"]
    assert "memory" in main["resources"]["limits"]


def test_bundle_volume_and_reload_root() -> None:
    deployment = load("deployment.yaml")
    config = load("configmap.yaml")["data"]
    pvc = load("pvc.yaml")
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    bundles = mounts["bundles"]
    assert bundles["readOnly"] is True
    assert volumes["bundles"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert config["RLHF_BUNDLE_ROOT"] == bundles["mountPath"]
    assert Path(config["RLHF_BUNDLE"]).parent == Path(bundles["mountPath"])
    # a read-only root filesystem still needs a writable /tmp
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]


def test_env_comes_from_configmap_and_secret_and_is_read_by_the_service() -> None:
    deployment = load("deployment.yaml")
    config = load("configmap.yaml")
    secret = load("secret.yaml")
    main = container(deployment)
    assert [ref["configMapRef"]["name"] for ref in main["envFrom"]] == [config["metadata"]["name"]]
    known = setting_env_names()
    assert set(config["data"]) <= known, set(config["data"]) - known
    assert all(isinstance(value, str) for value in config["data"].values())  # ConfigMap data are strings
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"]}
    assert set(secret_refs) == {"RLHF_API_KEY", "RLHF_ADMIN_KEY"}
    for env_name, ref in secret_refs.items():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], env_name
    # the template must not look like a usable key
    assert all(value.startswith("REPLACE_ME") for value in secret["stringData"].values())
    # the ConfigMap is a valid service configuration
    settings = ServiceSettings(**{k.removeprefix("RLHF_").lower(): v for k, v in config["data"].items()})
    assert settings.intra_op_threads == int(config["data"]["RLHF_INTRA_OP_THREADS"])


def test_selectors_and_targets_line_up() -> None:
    deployment = load("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    match = deployment["spec"]["selector"]["matchLabels"]
    assert match.items() <= pod_labels.items()
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(deployment)["ports"]}
    pdb = load("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # a drain can always proceed
    hpa = load("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container(deployment)["resources"]["requests"]  # Utilization needs a request
