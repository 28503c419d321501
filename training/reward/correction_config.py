"""What `rlhf correct-length` is asked for: kept apart from `correct_length.py` so the CLI can build its
options (`cli/options.py`) without importing onnxruntime (`rlhf --help` stays instant)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.configuration import Check, DataclassConfig


@dataclass
class CorrectionConfig(DataclassConfig):
    """Knobs of `rlhf correct-length`; saved into the manifest's ``length_correction_fit``."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "Preference pairs to fit on and judge with (hh-rlhf, question/chosen/rejected or "
            "conversational chosen/rejected message lists, JSONL gz or plain, or a saved `datasets` dir). "
            "Default: the embedded hh-rlhf pairs."
        },
    )
    # more than the export's default fit (128 pairs): the slope of a noisy score on length settles
    # slowly, and a one-off command can afford the pairs (README "Length bias" shows the effect)
    pairs: int = field(
        default=1024, metadata={"help": "Calibration pairs (both answers are fitted; 0 = all of them)."}
    )
    # what `rlhf export` evaluates on: the 200 validation pairs of a default run
    heldout_pairs: int = field(
        default=200,
        metadata={"help": "Held-out pairs on which accuracy and Pearson(score, length) are reported."},
    )
    # the export fits on fp32 too: the int8 graph is gated to rank pairs as fp32 does
    precision: str = field(default="fp32", metadata={"help": "Graph that scores the pairs: fp32 or int8."})
    version: str | None = field(
        default=None,
        metadata={
            "help": "Version of the corrected bundle (default: the old one + '-lc' + 6 hex digits of the "
            "correction; served scores change, so the version a trainer watches must change too)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Sequences per onnxruntime run (length-sorted)."})
    threads: int = field(default=2, metadata={"help": "onnxruntime intra-op threads."})

    def checks(self) -> list[Check]:
        return [
            ("pairs", self.pairs >= 0, "must be >= 0"),
            ("heldout_pairs", self.heldout_pairs >= 2, "must be >= 2 (a correlation needs two pairs)"),
            ("precision", self.precision in ("fp32", "int8"), "must be fp32 or int8"),
            ("version", self.version is None or bool(self.version.strip()), "must not be empty"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("threads", self.threads >= 1, "must be >= 1"),
        ]
