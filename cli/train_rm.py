"""`rlhf train-rm`: the command-line face of :func:`training.reward.train.train`.

Every option defaults to the :class:`RewardConfig` value (shown in --help), so the config dataclass is
the one place defaults live. torch and transformers are imported inside the command only.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from training.reward.config import ConfigError, RewardConfig, field_help

_RESUME_KEEPS = {"device", "num_workers"}  # options that may differ from the checkpoint's config


def _opt(name: str, flag: str | None = None) -> typer.models.OptionInfo:
    return typer.Option(f"--{(flag or name).replace('_', '-')}", help=field_help(name), show_default=False)


def train_rm_command(
    out: Annotated[
        Path, typer.Option("--out", help="Output directory (metrics, checkpoint/, final/).")
    ] = Path("runs/rm"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoint with its saved config.")
    ] = False,
    data: Annotated[str | None, _opt("data")] = None,
    base_model: Annotated[str | None, _opt("base_model")] = None,
    max_steps: Annotated[int | None, _opt("max_steps")] = None,
    epochs: Annotated[float | None, _opt("epochs")] = None,
    batch_size: Annotated[int | None, _opt("batch_size")] = None,
    grad_accum: Annotated[int | None, _opt("grad_accum")] = None,
    lr: Annotated[float | None, _opt("lr")] = None,
    warmup_ratio: Annotated[float | None, _opt("warmup_ratio")] = None,
    max_length: Annotated[int | None, _opt("max_length")] = None,
    min_question_tokens: Annotated[int | None, _opt("min_question_tokens")] = None,
    val_fraction: Annotated[float | None, _opt("val_fraction")] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    margin: Annotated[float | None, _opt("margin")] = None,
    center_coef: Annotated[float | None, _opt("center_coef")] = None,
    disable_dropout: Annotated[
        bool | None,
        typer.Option(
            "--disable-dropout/--keep-dropout", help=field_help("disable_dropout"), show_default=False
        ),
    ] = None,
    eval_every: Annotated[int | None, _opt("eval_every")] = None,
    checkpoint_every: Annotated[int | None, _opt("checkpoint_every")] = None,
    device: Annotated[str | None, _opt("device")] = None,
    num_workers: Annotated[int | None, _opt("num_workers")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bar (metrics still go to JSONL).")
    ] = False,
) -> None:
    """Train a reward model on preference pairs (default: the embedded hh-rlhf pairs, MiniLM)."""
    given = {
        k: v for k, v in locals().items() if k in {f.name for f in fields(RewardConfig)} and v is not None
    }
    if resume:
        refused = sorted(set(given) - _RESUME_KEEPS)
        if refused:
            raise typer.BadParameter(
                f"--resume continues with the checkpoint's config; drop {', '.join('--' + n.replace('_', '-') for n in refused)}"
            )
    try:
        config = RewardConfig(**given)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err

    from training.reward.checkpoint import CheckpointError
    from training.reward.data import DataError
    from training.reward.train import train

    try:
        train(config, out, resume=resume, progress=not quiet)
    except (DataError, CheckpointError, ConfigError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
