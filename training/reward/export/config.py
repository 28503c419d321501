"""`ExportConfig`: every knob of `rlhf export`, with why it has its default; saved into the manifest.

    config = ExportConfig()                              # the defaults `rlhf export` uses
    config = ExportConfig(version="2", int8=False)       # fp32-only bundle
    export_bundle("runs/rm", "bundles/rm-v1", config)

Same style as `RewardConfig`: each field has ``help`` metadata (`rlhf export` builds its options
from it), invalid values raise `ConfigError`, and the whole config (the int8 recipes included) goes
into the manifest's ``export_config``. torch-free and onnxruntime-free: the recipes' module is
imported only when a config is built, so `rlhf --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from service.configuration import Check, DataclassConfig

if TYPE_CHECKING:
    from training.reward.export.quantize import QuantRecipe


def _default_recipes() -> tuple[QuantRecipe, ...]:
    from training.reward.export.quantize import DEFAULT_RECIPES

    return DEFAULT_RECIPES


@dataclass
class ExportConfig(DataclassConfig):
    """Knobs of `rlhf export`; saved into the manifest as ``export_config``."""

    # -- naming ----------------------------------------------------------------------------------
    name: str | None = field(
        default=None, metadata={"help": "Bundle name (default: the run directory's name)."}
    )
    # a timestamp sorts and never collides between two exports of the same run
    version: str | None = field(
        default=None, metadata={"help": "Bundle version (default: UTC time of the export)."}
    )

    # -- what the gate measures on -------------------------------------------------------------------
    # the run's own held-out pairs: the accuracy the manifest reports is on data the model never saw
    eval_pairs: int = field(
        default=0, metadata={"help": "Validation-split pairs the gate evaluates (0 = the whole split)."}
    )
    # enough sequences to cover the length mix; more barely moves the activation ranges
    calibration_pairs: int = field(
        default=128,
        metadata={
            "help": "Training-split pairs (both answers) that calibrate the int8 activation ranges (0 = all)."
        },
    )
    # int8 is faster on CPUs and ships whenever it passes the gate (README "Export and int8")
    int8: bool = field(
        default=True, metadata={"help": "Also quantise to int8 (--no-int8: ship the fp32 graph only)."}
    )
    # int8 is judged against its own fp32 graph on the fidelity pairs: a point is within the noise of
    # those pairs, more is a worse model; a negative value refuses every int8 graph (tests use it)
    max_int8_drop: float = field(
        default=1.0,
        metadata={"help": "Max pairwise-accuracy points int8 may lose vs fp32; else only fp32 ships."},
    )
    # On the validation split alone one point is a handful of pairs, so the gate would flip on noise
    # (README "Export gate"). The drop is a fidelity check of the int8 graph against its own fp32
    # graph, so training pairs the ranges were not calibrated on measure it as well as unseen ones.
    fidelity_pairs: int = field(
        default=1000,
        metadata={
            "help": "Pairs on which int8 accuracy is compared with fp32: the evaluation pairs plus "
            "uncalibrated training pairs, up to this many (0 = evaluation pairs only)."
        },
    )
    # far above float rounding between the two runtimes, far below a score difference that matters
    parity_tolerance: float = field(
        default=1e-3, metadata={"help": "Max |ONNX fp32 - PyTorch| score on the evaluation pairs."}
    )
    # a score must not depend on its batch-mates: only float rounding may differ
    batch_tolerance: float = field(
        default=1e-4, metadata={"help": "Max |alone - in a mixed batch| score for every shipped graph."}
    )

    # the fitted score-length trend is always recorded (gate.length_trend); serving it as a correction
    # trades accuracy for length neutrality (README "Length bias"), so it is a choice, not a default
    length_correction: bool = field(
        default=False,
        metadata={
            "help": "Store the score-length trend fitted on the calibration pairs as the bundle's "
            "length correction, which the service subtracts from every score."
        },
    )

    # -- how the graphs are made -----------------------------------------------------------------------
    batch_size: int = field(default=32, metadata={"help": "Sequences per onnxruntime run during the gate."})
    threads: int = field(default=2, metadata={"help": "onnxruntime intra-op threads during the gate."})
    # the opset every onnxruntime the service may run with understands
    opset: int = field(default=17, metadata={"help": "ONNX opset of the exported graphs."})
    # eager traces plain MatMul/Softmax; the SDPA export adds a NaN guard after every softmax that slows
    # the int8 graph (README "Export gate"); the tracer checks the choice
    attention: str = field(
        default="eager",
        metadata={
            "help": "Attention traced into the graphs: eager (fastest in onnxruntime), sdpa, or model (as loaded)."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing bundle at --out (atomically)."}
    )
    # tried in order, fastest first, until one passes the gate (see quantize.DEFAULT_RECIPES for why)
    recipes: tuple[QuantRecipe, ...] = field(
        default_factory=_default_recipes,
        metadata={"help": "int8 recipes tried in order until one passes the gate."},
    )

    def checks(self) -> list[Check]:
        return [
            ("eval_pairs", self.eval_pairs >= 0, "must be >= 0"),
            ("calibration_pairs", self.calibration_pairs >= 0, "must be >= 0"),
            ("fidelity_pairs", self.fidelity_pairs >= 0, "must be >= 0"),
            ("parity_tolerance", self.parity_tolerance >= 0, "must be >= 0"),
            ("batch_tolerance", self.batch_tolerance >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("threads", self.threads >= 0, "must be >= 0 (0 = onnxruntime's default)"),
            ("recipes", len(self.recipes) >= 1 or not self.int8, "must hold a recipe when int8 is on"),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "recipes": [r.to_dict() for r in self.recipes]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`: recipes come back as QuantRecipe objects."""
        if "recipes" not in values:
            return super().from_dict(values)
        from training.reward.export.quantize import QuantRecipe

        def recipe(saved: dict[str, Any]) -> QuantRecipe:  # JSON turned its tuples into lists
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
            return QuantRecipe(**fields)

        recipes = tuple(recipe(r) for r in values["recipes"])
        return super().from_dict({**values, "recipes": recipes})
