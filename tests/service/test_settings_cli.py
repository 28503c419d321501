"""Settings from RLHF_* env, flags override env, and `rlhf serve` fails fast on a bad bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.configuration import ConfigError
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
    result = CliRunner().invoke(app, ["serve", "--precision", "int4"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "precision='int4'" in result.output


def test_invalid_settings_are_a_config_error_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_PORT", "70000")  # from the environment: the message quotes the text as given
    with pytest.raises(
        ConfigError, match=r"port='70000': Input should be less than or equal to 65535"
    ) as info:
        ServiceSettings.from_env(max_batch_pairs=0)
    assert set(info.value.fields) == {"port", "max_batch_pairs"}
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="max_pairs_per_request"):
        ServiceSettings.from_env(port=1, max_queue_pairs=10, max_pairs_per_request=11)


def test_a_secret_is_never_quoted_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        ServiceSettings.from_env(api_key=["s3cret-token"])  # a list is not a str
    assert "api_key=<secret>" in str(info.value) and "s3cret" not in str(info.value)


def test_every_setting_is_a_serve_flag_and_flags_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """One flag per ServiceSettings field (kept names such as --threads still work); a flag overrides
    its RLHF_* variable, and a setting without a flag keeps the environment's value."""
    import service.server
    from cli.main import app

    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "250"}).output
    for name in ServiceSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text, name
    assert "--threads" in help_text

    served: list[ServiceSettings] = []
    monkeypatch.setattr(service.server, "serve", served.append)
    monkeypatch.setenv("RLHF_PORT", "9001")
    monkeypatch.setenv("RLHF_DRAIN_SECONDS", "3")
    args = ["serve", "--port", "9002", "--threads", "3", "--subbatch-tokens", "1024", "--max-body-bytes", "4096",
            "--admin-key", "adm1n", "--retry-after-seconds", "5", "--log-level", "debug"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = served[-1]
    assert settings.port == 9002 and settings.intra_op_threads == 3 and settings.subbatch_tokens == 1024
    assert (
        settings.max_body_bytes == 4096
        and settings.retry_after_seconds == 5
        and settings.log_level == "debug"
    )
    assert settings.admin_key is not None and settings.admin_key.get_secret_value() == "adm1n"
    assert settings.drain_seconds == 3.0  # from the environment: the flag was not given
    assert settings.max_batch_pairs == ServiceSettings.model_fields["max_batch_pairs"].default
    monkeypatch.setenv("RLHF_API_KEY", "from-env")
    assert CliRunner().invoke(app, ["serve", "--api-key", ""]).exit_code == 0
    assert served[-1].api_key is None  # an empty key means no key, as an empty RLHF_API_KEY does
