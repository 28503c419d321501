"""The fail-fast check before serving (`service.server.preflight`) and `python -m service` using it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.bundle import BundleError
from service.server import preflight
from tests.service.conftest import settings_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tampered(bundle_v1: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "rm-bad"
    shutil.copytree(bundle_v1, copy)
    with (copy / "tokenizer.json").open("a", encoding="utf-8") as handle:
        handle.write(" ")  # one byte changes its sha256
    return copy


def test_a_verified_bundle_or_none_passes(bundle_v1: Path) -> None:
    preflight(settings_for(bundle_v1))
    preflight(settings_for(None))


def test_a_tampered_bundle_is_refused_with_the_reason(tampered: Path) -> None:
    with pytest.raises(BundleError, match=r"tokenizer\.json"):
        preflight(settings_for(tampered))


def test_python_m_service_exits_2_before_serving(tampered: Path) -> None:
    env = {**os.environ, "RLHF_BUNDLE": str(tampered), "RLHF_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "tokenizer.json" in result.stderr
