"""`rlhf compare`: finished policy runs side by side (`training/policy/compare.py`).

    rlhf compare plain=runs/pg-plain odin=runs/pg-odin --gold-bundle bundles/gold --out runs/compare

Prints one table (a column per run: proxy and gold gain, answer length against the start, KL,
refusal and repetition shares, verdict) and a few held-out answers before and after; ``--out``
writes compare.json, compare.md (paste-ready) and compare.png (per-step curves). torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.failures import refusal


def compare_command(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN",
            help="Finished `rlhf train-policy --out` directories; LABEL=DIR names one in the table.",
        ),
    ],
    gold_bundle: Annotated[
        Path | None,
        typer.Option(
            "--gold-bundle",
            help="Re-score every evaluation sample of every run with this bundle (one the policies never "
            "optimised); default: the gold stored in the runs, if they all used the same one.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write compare.json, compare.md and compare.png here.")
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", min=0, help="Held-out prompts shown before/after.")
    ] = 3,
    threads: Annotated[int, typer.Option("--threads", min=1, help="onnxruntime threads of the gold.")] = 1,
) -> None:
    """Judge finished policy runs side by side against one gold reward."""
    from training.policy.compare import compare_runs, load_run, parse_run_argument
    from training.policy.compare_report import answer_lines, gold_line, table_lines, write_outputs
    from training.policy.errors import PolicyTrainingError
    from training.policy.gold import GoldScorer

    with refusal("compare", PolicyTrainingError, OSError):  # CompareError, GoldError: PolicyTrainingErrors
        loaded = [load_run(path, label) for label, path in map(parse_run_argument, runs)]
        gold = GoldScorer.load(gold_bundle, threads=threads) if gold_bundle is not None else None
        comparison = compare_runs(loaded, gold, str(gold_bundle or ""))
        written = write_outputs(comparison, out, samples) if out is not None else []
    typer.echo("\n".join(table_lines(comparison)))
    typer.echo("\n" + gold_line(comparison))
    for note in comparison.notes:
        typer.echo(f"note: {note}")
    if samples:
        typer.echo("\nheld-out prompts, first sampled answer before → after [proxy, gold in std units]:")
        typer.echo("\n".join(answer_lines(comparison, samples)))
    if written:
        typer.echo("\nwrote " + ", ".join(str(path) for path in written))
