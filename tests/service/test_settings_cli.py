"""Settings from RLHF_* env, flags override env, and `rlhf serve` fails fast on a bad bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.settings import ServiceSettings


def test_env_prefix_and_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLHF_PORT", "9001")
    monkeypatch.setenv("RLHF_PRECISION", "fp32")
    monkeypatch.setenv("RLHF_API_KEY", "s3cret-token")
    monkeypatch.setenv("RLHF_BUNDLE", str(tmp_path / "b"))
    settings = ServiceSettings()
    assert settings.port == 9001 and settings.precision == "fp32"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret-token"
    assert "s3cret" not in repr(settings)  # secrets are not logged
    assert settings.reload_root() == tmp_path.resolve()
    assert ServiceSettings(port=7000).port == 7000  # init arguments (CLI flags) beat the environment
    monkeypatch.setenv("RLHF_PRECISION", "int4")
    with pytest.raises(ValidationError):
        ServiceSettings()


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_pairs_per_request"):
        ServiceSettings(max_queue_pairs=10, max_pairs_per_request=11)


def test_rlhf_serve_fails_fast_on_a_missing_bundle(tmp_path: Path) -> None:
    from cli.main import app

    result = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    result = CliRunner().invoke(app, ["serve", "--precision", "int4"])
    assert result.exit_code == 2
