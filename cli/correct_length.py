"""`rlhf correct-length`: the command-line face of `training/reward/correct_length.py`.

    rlhf correct-length bundles/imported                          # in place, embedded hh pairs
    rlhf correct-length bundles/rm-v1 --out bundles/rm-v1-lc --data pairs.jsonl.gz --pairs 512

Fits the bundle's score-length trend on calibration pairs with its own encoder and graph, stores it as
the manifest's ``length_correction`` (the service subtracts it from every score), and prints one JSON
line and one human line: held-out Pearson(score, answer tokens) and pairwise accuracy before and
after. One option per :class:`CorrectionConfig` field (`cli/options.py`). torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.failures import refusal
from cli.options import ConfigOptions
from training.reward.correction_config import CorrectionConfig

CORRECT = ConfigOptions(CorrectionConfig)


@CORRECT.command
def correct_length_command(
    given: dict[str, Any],
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (verified before use).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the corrected bundle here (a new directory); default: correct BUNDLE in place.",
        ),
    ] = None,
) -> None:
    """Fit and store a post-hoc length correction for any bundle (exported here or imported)."""
    config = CORRECT.build(given)

    from service.bundle import BundleError
    from service.conversation import ConversationError
    from training.reward.correct_length import CorrectionError, correct_bundle_length
    from training.reward.data import DataError
    from training.reward.manifest_rewrite import RewriteError

    refused = (BundleError, DataError, ConversationError, CorrectionError, RewriteError, OSError)
    with refusal("correct-length", *refused):  # nothing was written
        result = correct_bundle_length(bundle, config, out)
    typer.echo(json.dumps(result.to_dict()))
    typer.echo(result.format_text())
