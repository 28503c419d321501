"""`rlhf score`: a dataset scored offline by the service, for best-of-n selection and filtering.

    rlhf score --data samples.jsonl.gz --service http://rm-0:8000,http://rm-1:8000 --out scores.jsonl
    rlhf score --data samples.jsonl.gz --service http://rm-0:8000 --out scores.jsonl --resume

Rows (pairs, prompt + completion, preference pairs, conversations, hh dialogues; see
`integrations.scorefile`) go through `service.client.RewardClient`: ``--chunk-size`` pairs per request,
``--concurrency`` requests at a time per URL, round-robin over the URLs, transient failures retried
with backoff. Output: one JSON line per input row, in input order. Exit code 1 when the service could
not score a row after the retries (the rows before it are written: ``--resume`` continues), 2 for a
bad input file or option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from integrations.clients import API_KEY_ENV


def score_command(
    data: Annotated[Path, typer.Option(help="JSONL or JSONL.gz rows to score")],
    service: Annotated[str, typer.Option(help="service URL(s), comma-separated for replicas")],
    out: Annotated[Path, typer.Option(help="JSONL of scored rows (appended to with --resume)")],
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run: skip rows already in --out")
    ] = False,
    chunk_size: Annotated[int, typer.Option(help="pairs per request")] = 64,
    concurrency: Annotated[int, typer.Option(help="requests in flight per URL")] = 4,
    block_rows: Annotated[
        int, typer.Option(help="rows scored and written per block (what --resume redoes at most)")
    ] = 1024,
    max_retries: Annotated[int, typer.Option(help="retries of a transient failure per request")] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 60.0,
    allow_model_change: Annotated[
        bool,
        typer.Option(
            help="go on when the service's model version differs from the one --out was scored with"
        ),
    ] = False,
    api_key: Annotated[
        str | None, typer.Option(envvar=API_KEY_ENV, help="bearer token of the service")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar (on stderr)")] = True,
) -> None:
    """Score a JSONL(.gz) file of pairs, dialogues or conversations through the scoring service."""
    from tqdm import tqdm

    from integrations.clients import ServiceNotConfigured, service_urls
    from integrations.scorefile import ScoreFileError, ScoringStopped, score_file
    from service.client import RequestRejected, RewardClient

    try:
        urls = service_urls(service)
    except ServiceNotConfigured as err:
        raise typer.BadParameter(str(err), param_hint="--service") from err
    if min(chunk_size, concurrency, block_rows) < 1 or max_retries < 0:
        raise typer.BadParameter(
            "--chunk-size, --concurrency and --block-rows must be >= 1, --max-retries >= 0"
        )
    bar = tqdm(unit="row", disable=not progress, dynamic_ncols=True)

    def on_total(total: int, skipped: int) -> None:
        bar.reset(total=total)
        bar.update(skipped)

    client = RewardClient(
        urls, api_key=api_key, chunk_size=chunk_size, max_concurrency=concurrency * len(urls),
        max_retries=max_retries, timeout=timeout,
    )  # fmt: skip
    try:
        summary = score_file(
            data, out, client, resume=resume, block_rows=block_rows, allow_model_change=allow_model_change,
            on_total=on_total, on_rows=bar.update,
        )  # fmt: skip
    except ScoreFileError as err:
        raise typer.BadParameter(str(err)) from err
    except (ScoringStopped, RequestRejected) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from err
    finally:
        bar.close()
        client.close()
    typer.echo(
        f"{summary.written} rows scored into {out} ({summary.skipped} already there, {summary.rows} in "
        f"{data}), model version {summary.model_version}"
    )
