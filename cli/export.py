"""`rlhf export`, `rlhf eval` and `rlhf bench quant`: the command-line faces of the export, of
`training/reward/evaluate.py` and of `bench/quant.py`.

    rlhf export runs/rm --out bundles/rm-v1
    rlhf eval --bundle bundles/rm-v1 --data heldout.jsonl.gz --precision int8 --json
    rlhf bench quant --bundle bundles/rm-v1

`rlhf export` has one option per :class:`ExportConfig` field, generated from its help metadata
(`cli/options.py`). Heavy imports (torch, transformers, onnxruntime) happen inside the commands so
`rlhf --help` stays instant; `rlhf eval` and `rlhf bench quant` never import torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, cast, get_args

import typer

from cli.failures import refusal
from cli.options import ConfigOptions
from service.bundle import Precision
from training.reward.export.config import ExportConfig

PRECISIONS: tuple[str, ...] = get_args(Precision)  # every graph a bundle may ship


EXPORT = ConfigOptions(ExportConfig, exclude={"recipes"})
# where `rlhf export` and `rlhf import-rm` write their bundle
BundleOut = Annotated[Path, typer.Option("--out", help="Bundle directory to create (written atomically).")]


@EXPORT.command
def export_command(
    given: dict[str, Any],
    run_dir: Annotated[
        Path, typer.Argument(help="Training run directory (the --out of `rlhf train-rm`) or its final/.")
    ],
    out: BundleOut,
) -> None:
    """Export a trained reward model to a gated ONNX bundle (fp32 + static int8) with a manifest."""
    config = EXPORT.build(given)

    from training.reward.export import export_bundle
    from training.reward.export.gate import ExportError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with refusal("export", ExportError):
        result = export_bundle(run_dir, out, config)
    m = result.manifest
    int8 = (
        f"int8 shipped ({m.eval.accuracy_int8:.2%})"
        if m.int8.shipped
        else f"int8 NOT shipped: {m.int8.reason}"
    )
    typer.echo(
        f"wrote {result.bundle_dir} ({m.name} {m.version}): fp32 accuracy {m.eval.accuracy_fp32:.2%} on "
        f"{m.eval.pairs} pairs, max |onnx - torch| {result.gate['max_abs_diff_onnx_torch']:.1e}; {int8}"
    )


def eval_command(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory (verified before use).")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Preference pairs (hh-rlhf or question/chosen/rejected JSONL, gz or plain, or a saved "
            "`datasets` dir). Default: the embedded 2,000 hh-rlhf pairs, which include the bundle's "
            "training pairs (the run's validation split is not stored in the bundle), so pass held-out data "
            "for an honest number."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, int8 or fp16, when the bundle ships that graph (default: int8 when it ships, else "
            "fp32; fp16 runs on the CPU here, for its accuracy, not its speed)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per onnxruntime run (length-sorted).")] = 32,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 2,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N pairs (0 = all).")] = 0,
    split_of: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate on the validation split of this `rlhf train-rm` run (re-created from its saved "
            "config) instead of --data: the honest number for a bundle exported from it."
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            help="A second bundle scored on the same pairs; adds the paired accuracy difference (--bundle "
            "minus this one) with its standard error."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Pairwise accuracy, margin, truncation and length bias of a bundle on preference pairs (onnxruntime)."""
    from service.bundle import BundleError
    from training.reward.data import DataError, load_pairs
    from training.reward.evaluate import compare_reports, evaluate_bundle, validation_split

    if precision is not None and precision not in PRECISIONS:
        raise typer.BadParameter(
            f"must be one of {', '.join(PRECISIONS)}, got {precision!r}", param_hint="--precision"
        )
    if batch_size < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--batch-size")
    if split_of is not None and data is not None:
        raise typer.BadParameter("give --data or --split-of, not both", param_hint="--split-of")
    with refusal("eval", BundleError, DataError):  # a graph the bundle lacks: it names those it has
        pairs = load_pairs(data) if split_of is None else validation_split(split_of)  # read once for both
        reports = [
            evaluate_bundle(
                path,
                pairs,
                cast(Precision | None, precision),
                batch_size=batch_size,
                threads=threads,
                limit=limit,
            )
            for path in ([bundle] if against is None else [bundle, against])
        ]
    if against is None:
        typer.echo(json.dumps(reports[0].to_dict()) if as_json else reports[0].format_text())
        return
    paired = compare_reports(reports[1], reports[0])
    if as_json:
        typer.echo(json.dumps({"reports": [r.to_dict() for r in reports], "paired": paired.to_dict()}))
    else:
        typer.echo("\n\n".join([*(r.format_text() for r in reports), paired.format_text()]))


def bench_quant_command(
    bundle: Annotated[
        Path,
        typer.Option(
            "--bundle", help="Bundle with model.onnx and model.int8.onnx or model.fp16.onnx (or all three)."
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="Pairs whose length mix is used (default: embedded hh-rlhf).")
    ] = None,
    pairs: Annotated[
        int, typer.Option(help="Pairs to score (both answers each), spread over the data.")
    ] = 256,
    batch_size: Annotated[int, typer.Option(help="Sequences per onnxruntime run.")] = 32,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 2,
    repeats: Annotated[int, typer.Option(help="Timed passes per configuration; the fastest counts.")] = 2,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
) -> None:
    """fp32 vs int8 (and fp16) pairs/s in onnxruntime, length-sorted vs arrival-order batches, in one run."""
    from bench.quant import run_bench
    from service.bundle import BundleError

    with refusal("bench", BundleError):
        result = run_bench(bundle, data, pairs, batch_size, threads, repeats)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.format_table())
