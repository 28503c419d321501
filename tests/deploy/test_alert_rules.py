"""Prometheus' own checker on our files: `promtool check rules|config` and the rule unit tests in
deploy/prometheus/alerts.test.yml (synthetic series in, the exact alerts that must fire out).

promtool is not on PyPI; deploy/tools/fetch-promtool.sh unpacks it from Debian's `prometheus` package
into a cache (about 20 MB, once) when it is not installed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def promtool() -> str:
    result = subprocess.run(
        ["sh", str(ROOT / "deploy" / "tools" / "fetch-promtool.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"could not get promtool: {result.stderr}"
    return result.stdout.strip()


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_scrape_config_passes_promtool_check(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]  # mounted at /etc/prometheus in compose
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    defined = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert tested == defined  # every alert has a unit test


def test_a_broken_alert_fails_its_unit_test(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: a 429 threshold raised to 50 % no longer fires on 9 % refusals."""
    text = (PROMETHEUS / "alerts.yml").read_text(encoding="utf-8")
    broken = text.replace("[5m])) > 0.05", "[5m])) > 0.5", 1)
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    (tmp_path / "alerts.test.yml").write_text((PROMETHEUS / "alerts.test.yml").read_text(), encoding="utf-8")
    result = run(promtool, "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "RewardServiceHigh429Rate" in result.stdout + result.stderr
