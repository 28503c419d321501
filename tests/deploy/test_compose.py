"""deploy/compose.yaml follows the Compose specification and its pieces point at each other correctly.

The schema is the Compose spec vendored in `check-jsonschema` (no network). The cross-checks: every
mounted file exists, Prometheus scrapes the service by its compose name and port and loads the alert
rules from where they are mounted, Grafana's provider path is where the dashboards are mounted.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from service.settings import ServiceSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path (relative to deploy/) of the bind mounts; named volumes skipped."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "bind":
                found[volume["target"]] = DEPLOY / volume["source"]
            continue
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            found[target] = DEPLOY / source
    return found


def test_compose_matches_the_compose_specification() -> None:
    schema_text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_text.read_text(encoding="utf-8"))
    jsonschema.validate(compose(), schema)
    broken = compose()
    broken["services"]["reward"]["restart_policy"] = "always"  # not a compose key: must be refused
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid(broken)


def test_mounted_files_exist() -> None:
    services = compose()["services"]
    assert set(services) == {"reward", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        for target, source in mounts(services[name]).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    build = services["reward"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for env_file in services["reward"].get("env_file", []):
        assert env_file["required"] is False  # the keys file is optional and never in git
        example = DEPLOY / (Path(env_file["path"]).name + ".example")
        assert example.is_file()


def test_reward_service_configuration() -> None:
    reward = compose()["services"]["reward"]
    env = reward["environment"]
    known = {f"RLHF_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(env) <= known, set(env) - known
    (bundles,) = [v for v in reward["volumes"] if v["target"] == env["RLHF_BUNDLE_ROOT"]]
    assert bundles["read_only"] is True
    assert env["RLHF_BUNDLE"].startswith(env["RLHF_BUNDLE_ROOT"] + "/")
    assert reward["read_only"] is True
    assert float(env["RLHF_INTRA_OP_THREADS"]) == float(reward["cpus"])
    grace = int(reward["stop_grace_period"].removesuffix("s"))
    assert grace > float(env["RLHF_DRAIN_SECONDS"])
    assert reward["ports"] == ["8000:8000"]


def test_prometheus_scrapes_the_service_and_loads_the_rules() -> None:
    services = compose()["services"]
    prom_mounts = mounts(services["prometheus"])
    config_path = next(
        a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--config")
    )
    config = yaml.safe_load(prom_mounts[config_path].read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:
        assert rule_file in prom_mounts, f"rule file {rule_file} is not mounted"
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and host == "reward"
    assert services["reward"]["environment"].get("RLHF_PORT", "8000") == port
    assert job["metrics_path"] == "/metrics"
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    assert f'job="{job["job_name"]}"' in alerts  # the target-down alert names this job


def test_grafana_provisioning_finds_datasource_and_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "reward-service.yml").read_text())[
        "providers"
    ]
    dashboards_dir = grafana_mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards_dir.glob("*.json")) == ["reward-service.json"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (grafana_mounts[str(home.parent)] / home.name).is_file()
