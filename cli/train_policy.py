"""`rlhf train-policy`: policy optimisation against a running scoring service.

    rlhf train-policy --service http://localhost:8000 --steps 30 --out runs/pi

One option per :class:`PolicyConfig` field, generated from its help metadata (`cli/options.py`); the
run-control fields are listed under their own heading. torch, transformers and peft are imported
inside the command, so `rlhf --help` stays instant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from cli.options import ConfigOptions, Flag
from training.policy.config import PolicyConfig


def _modules(option: str) -> list[str] | None:
    """``--lora-target-modules q_proj,v_proj`` -> a list; an empty value means peft's default."""
    return [m.strip() for m in option.split(",") if m.strip()] or None


def _number(value: float | None) -> str:
    """A signed number for the summary line; "undefined" for null (e.g. a correlation of equal lengths)."""
    return "undefined" if value is None else f"{value:+.2f}"


POLICY = ConfigOptions(
    PolicyConfig,
    flags={
        "service_urls": Flag(names=("--service",), required=True, help="Repeat for several."),
        "prompts_file": Flag(names=("--prompts",), type=Path, parse=str),
        "reward_run": Flag(type=Path, parse=str),
        "out": Flag(type=Path, parse=str),
        "lora_target_modules": Flag(
            type=str, parse=_modules, help="Comma-separated, e.g. q_proj,v_proj; default all-linear."
        ),
        "api_key": Flag(envvar="RLHF_API_KEY"),
    },
)


@POLICY.command
def train_policy_command(given: dict[str, Any]) -> None:
    """Optimise a causal LM by policy gradient against the scoring service's rewards."""
    config = POLICY.build(given)

    from service.client import RewardClientError
    from training.policy.errors import PolicyTrainingError
    from training.policy.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scoring request is noise
    try:
        summary = train(config)
    except (PolicyTrainingError, RewardClientError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from err
    typer.echo(json.dumps(summary, indent=2))
    before, after = summary.get("before"), summary.get("after")
    if before and after:
        typer.echo(
            f"held-out reward: {before['mean_raw']:.3f} -> {after['mean_raw']:.3f} "
            f"({summary['gain_in_std']:+.2f} RM score std), KL {summary.get('kl_last')}, "
            f"scoring share {summary.get('scoring_share_mean', 0):.1%}"
        )
    if before and after and summary.get("gold_model"):
        typer.echo(
            f"gold reward: {summary['gold_gain_in_std']:+.2f} ± {summary['gold_gain_se_in_std']:.2f} gold std "
            f"(proxy {summary['gain_in_std']:+.2f} ± {summary['gain_se_in_std']:.2f}; gold's own "
            f"Pearson(score, length) after: {_number(after['gold_length_pearson'])}): {summary['verdict']}"
        )
