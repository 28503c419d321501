"""`rlhf import-rm`: a Hugging Face reward model brought as is → a gated ONNX bundle, without training.

    rlhf import-rm models/my-rm --out bundles/my-rm                      # embedded pairs, format auto
    rlhf import-rm models/my-rm --out bundles/my-rm --data pairs.jsonl --input-format pair
    rlhf import-rm models/my-rm --out bundles/my-rm --eval-pairs 64 --calibration-pairs 32 --fidelity-pairs 200

One option per :class:`ImportConfig` field (the export's plus the pairs, format and truncation),
generated from its help metadata (`cli/options.py`). The checks and the gate are the export's
(`training/reward/export/import_rm.py`); torch and transformers are imported only when it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.export import BundleOut
from cli.failures import refusal
from cli.options import ConfigOptions
from training.reward.export.config import ImportConfig

IMPORT = ConfigOptions(ImportConfig, exclude={"recipes"})


@IMPORT.command
def import_rm_command(
    given: dict[str, Any],
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Local Hugging Face model directory: an AutoModelForSequenceClassification with one "
            "label (config.json, weights) and its tokenizer."
        ),
    ],
    out: BundleOut,
) -> None:
    """Turn an existing reward model (a one-label sequence classifier) into a gated ONNX bundle."""
    config = IMPORT.build(given)

    from training.reward.data import DataError
    from training.reward.export.gate import ExportError
    from training.reward.export.import_rm import import_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with refusal("import", ExportError, DataError):
        result = import_checkpoint(checkpoint, out, config)
    m, gate = result.manifest, result.gate
    int8 = "int8 shipped" if m.int8.shipped else f"int8 NOT shipped: {m.int8.reason}"
    typer.echo(
        f"wrote {result.bundle_dir} ({m.name} {m.version}, {m.input_format} format): fp32 accuracy "
        f"{m.eval.accuracy_fp32:.2%} on {m.eval.pairs} held-out pairs, max |onnx - torch| "
        f"{gate['max_abs_diff_onnx_torch']:.1e}, batch diff {gate['batch_diff_fp32']:.1e}; {int8}"
    )
