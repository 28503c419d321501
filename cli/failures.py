"""How a command reports a refusal: one line on stderr naming what failed and why, then exit code 1.

    with refusal("export", ExportError):
        result = export_bundle(run_dir, out, config)

The commands that check before they write (export, import-rm, eval, bench quant, correct-length) refuse
through this one block, so every refusal reads the same and exits with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

EXIT_FAILED = 1  # a gate, a bundle check or the data refused; the message says which


@contextmanager
def refusal(what: str, *errors: type[Exception]) -> Iterator[None]:
    """Within the block, any of ``errors`` becomes ``{what} failed: {message}`` on stderr and exit 1;
    other exceptions (bugs) go through unchanged, with their traceback."""
    try:
        yield
    except errors as exc:
        typer.echo(f"{what} failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from exc
