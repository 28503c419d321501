"""`rlhf serve`: the scoring service from the command line. Flags override RLHF_* environment variables.

rlhf serve --bundle bundles/rm-v1 --precision int8 --port 8000 --threads 2
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from service.bundle import BundleError, load_bundle
from service.settings import ServiceSettings


def check_bundle(settings: ServiceSettings) -> None:
    """Fail fast with the reason when the configured bundle is unusable (the log would be easy to miss)."""
    if settings.bundle is None:
        return
    try:
        load_bundle(settings.bundle)
    except BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def serve_command(
    bundle: Annotated[Path | None, typer.Option(help="bundle directory (env RLHF_BUNDLE)")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | int8 (auto = int8 if shipped)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (0 = per core)")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="tokens gathered per batching round")] = None,
    max_batch_pairs: Annotated[int | None, typer.Option(help="pairs per onnxruntime run")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="max wait for batch-mates (ms)")] = None,
    max_queue_pairs: Annotated[int | None, typer.Option(help="admitted pairs before 429")] = None,
    bundle_root: Annotated[Path | None, typer.Option(help="reloads must stay under this directory")] = None,
    log_level: Annotated[str | None, typer.Option(help="critical|error|warning|info|debug")] = None,
) -> None:
    """Serve a reward bundle over HTTP (one process; scale out with replicas)."""
    from service.server import serve

    flags: dict[str, Any] = {
        "bundle": bundle,
        "precision": precision,
        "host": host,
        "port": port,
        "intra_op_threads": threads,
        "max_batch_tokens": max_batch_tokens,
        "max_batch_pairs": max_batch_pairs,
        "batch_wait_ms": batch_wait_ms,
        "max_queue_pairs": max_queue_pairs,
        "bundle_root": bundle_root,
        "log_level": log_level,
    }
    try:
        settings = ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    check_bundle(settings)
    serve(settings)
