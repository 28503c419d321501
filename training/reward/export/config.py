"""`ExportConfig`: every knob of `rlhf export`, with why it has its default; saved into the manifest.
`ImportConfig`: the same plus what `rlhf import-rm` needs for a checkpoint that comes without a run.

    config = ExportConfig()                              # the defaults `rlhf export` uses
    config = ExportConfig(version="2", int8=False)       # fp32-only bundle
    export_bundle("runs/rm", "bundles/rm-v1", config)
    import_checkpoint("models/rm", "bundles/rm", ImportConfig(data="pairs.jsonl", eval_pairs=64))

Same style as `RewardConfig`: each field has ``help`` metadata (`rlhf export` and `rlhf import-rm`
build their options from it), invalid values raise `ConfigError`, and the whole config (the int8
recipes included) goes into the manifest's ``export_config``. Every sample the gate draws has its
size here (eval, calibration, fidelity pairs, the batch probe), so its cost can be scaled to the model. torch-free and onnxruntime-free: the recipes' module is
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
        default=None,
        metadata={"help": "Bundle name (default: the run's or the checkpoint's directory name)."},
    )
    # a timestamp sorts and never collides between two exports of the same run
    version: str | None = field(
        default=None, metadata={"help": "Bundle version (default: UTC time of the export)."}
    )

    # -- what the gate measures on -------------------------------------------------------------------
    # the run's own held-out pairs: the accuracy the manifest reports is on data the model never saw
    eval_pairs: int = field(
        default=0,
        metadata={
            "help": "Held-out pairs the gate evaluates: a run's validation split, or import-rm's held-out "
            "share (0 = all of them)."
        },
    )
    # enough sequences to cover the length mix; more barely moves the activation ranges
    calibration_pairs: int = field(
        default=128,
        metadata={
            "help": "Pairs (both answers) that calibrate the int8 activation ranges and fit the length "
            "trend: a run's training split, or import-rm's non-held-out pairs (0 = all)."
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
            "training (import-rm: calibration-share) pairs not calibrated on, up to this many (0 = "
            "evaluation pairs only)."
        },
    )
    # mixed lengths from shortest to longest, so the short ones are padded heavily inside the batch;
    # each is run alone too, so this is the phase's cost in model runs (plus one)
    batch_probe: int = field(
        default=32,
        metadata={
            "help": "Evaluation sequences in the batch-independence check: each scored alone and all "
            "inside one mixed-length batch (per shipped graph)."
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
    # GPUs run fp16 MatMuls far faster than fp32, CPUs slower: a graph for GPU serving, so opt-in
    fp16: bool = field(
        default=False,
        metadata={
            "help": "Also write an fp16 graph for GPU serving (rlhf serve --provider cuda), shipped when "
            "it passes its gate (parity with fp32, batch independence)."
        },
    )
    # a hundredth of the score spread: above fp16's rounding of a score, below any preference it decides
    fp16_tolerance: float = field(
        default=0.01,
        metadata={
            "help": "Max |fp16 - fp32| of any graph output on the evaluation pairs, in train-set score "
            "stds; beyond it the fp16 graph does not ship."
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
            ("batch_probe", self.batch_probe >= 2, "must be >= 2 (a batch needs two sequences)"),
            ("parity_tolerance", self.parity_tolerance >= 0, "must be >= 0"),
            ("batch_tolerance", self.batch_tolerance >= 0, "must be >= 0"),
            ("fp16_tolerance", self.fp16_tolerance >= 0, "must be >= 0"),
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


@dataclass
class ImportConfig(ExportConfig):
    """Knobs of `rlhf import-rm`: the export's, plus what a checkpoint without a training run lacks:
    the preference pairs the gate runs on and how the model reads them. Saved as ``export_config``."""

    # any preference data works: the gate measures parity, batch independence and int8 fidelity on it
    data: str | None = field(
        default=None,
        metadata={
            "help": "Preference pairs for the gate and int8 calibration (hh-rlhf, question/chosen/rejected or "
            "conversational chosen/rejected message lists, JSONL gz or plain, or a saved `datasets` dir; "
            "default: the embedded hh-rlhf pairs)."
        },
    )
    # a reward model reads what it was trained on; a chat template is the sign of a conversation model
    input_format: str = field(
        default="auto",
        metadata={
            "help": "How pairs become ids: pair (tokenizer's pair template) | chat (the checkpoint's chat "
            "template) | auto (chat when the checkpoint's tokenizer has a chat template)."
        },
    )
    # the service truncates to it; longer costs more per scored item, in the gate and when serving
    max_length: int = field(
        default=512, metadata={"help": "Max tokens per scored item (the bundle's truncation budget)."}
    )
    min_question_tokens: int = field(
        default=32, metadata={"help": "pair format: question tokens kept before the answer is cut."}
    )
    # held-out pairs give the accuracy the manifest reports; the rest calibrate int8 (as a run's split)
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of the pairs held out for the gate's evaluation; the rest calibrate int8."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the deterministic held-out split."})

    def checks(self) -> list[Check]:
        from training.reward.config import encoding_checks

        return [
            *super().checks(),
            *encoding_checks(self.input_format, self.max_length),
            ("min_question_tokens", self.min_question_tokens >= 0, "must be >= 0"),
            ("eval_fraction", 0.0 < self.eval_fraction < 1.0, "must be in (0, 1)"),
        ]
