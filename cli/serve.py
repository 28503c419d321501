"""`rlhf serve`: the scoring service from the command line, one flag per `ServiceSettings` field.

    rlhf serve --bundle bundles/rm-v1 --precision int8 --port 8000 --threads 2
    rlhf serve --bundle bundles/rm-v1 --provider cuda      # onnxruntime-gpu; fp16 when the bundle ships it

The flags are generated from the settings' field descriptions (`cli/options.py`); a flag overrides
its RLHF_* environment variable, which overrides the default shown in --help.
"""

from __future__ import annotations

from typing import Any

import typer

from cli.options import ConfigOptions, Flag
from service.bundle import BundleError
from service.configuration import ConfigError
from service.providers import ProviderUnavailable
from service.settings import ServiceSettings

_SECRET_FLAG = "Prefer the env variable: a flag shows in the process list."


def _no_empty_key(value: str) -> str | None:
    """An empty key means no key, as an empty RLHF_* variable does (an empty token no client could send)."""
    return value or None


SETTINGS = ConfigOptions(
    ServiceSettings,
    env_prefix="RLHF_",
    flags={
        "intra_op_threads": Flag(names=("--threads",)),
        "api_key": Flag(parse=_no_empty_key, help=_SECRET_FLAG),
        "admin_key": Flag(parse=_no_empty_key, help=_SECRET_FLAG),
    },
)


@SETTINGS.command
def serve_command(given: dict[str, Any]) -> None:
    """Serve a reward bundle over HTTP (one process; scale out with replicas)."""
    from service.server import preflight, serve

    try:
        settings = ServiceSettings.from_env(**given)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        preflight(settings)  # fail fast with the reason: the log would be easy to miss
    except (BundleError, ProviderUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    serve(settings)
