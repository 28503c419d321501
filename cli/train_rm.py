"""`rlhf train-rm`: the command-line face of :func:`training.reward.train.train`.

    rlhf train-rm --out runs/rm --max-steps 200 --lr 3e-5

One option per :class:`RewardConfig` field, generated from its help metadata (`cli/options.py`), so
the config dataclass is the one place defaults live. torch and transformers are imported inside the
command only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import ConfigOptions, Flag
from training.reward.config import ConfigError, RewardConfig

REWARD = ConfigOptions(RewardConfig, flags={"disable_dropout": Flag(off="--keep-dropout")})


@REWARD.command
def train_rm_command(
    given: dict[str, Any],
    out: Annotated[
        Path, typer.Option("--out", help="Output directory (metrics, checkpoint/, final/).")
    ] = Path("runs/rm"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoint with its saved config.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress bar (metrics still go to JSONL).")
    ] = False,
) -> None:
    """Train a reward model on preference pairs (default: the embedded hh-rlhf pairs, MiniLM)."""
    if resume:
        refused = sorted(set(given) - RewardConfig.run_control_fields())
        if refused:
            raise typer.BadParameter(
                f"--resume continues with the checkpoint's config; drop {', '.join(REWARD.flag(n) for n in refused)}"
            )
    config = REWARD.build(given)

    from training.reward.bases import BaseModelError
    from training.reward.checkpoint import CheckpointError
    from training.reward.data import DataError
    from training.reward.encoders import EncoderSourceError
    from training.reward.train import train

    try:
        train(config, out, resume=resume, progress=not quiet)
    except (DataError, CheckpointError, ConfigError, EncoderSourceError, BaseModelError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
