"""The model bundle: the one artefact that crosses from training to serving.

A bundle is a directory (see DESIGN.md)::

    manifest.json     what the model is, how to encode for it, how it was verified, file hashes;
                      optionally its heads (ensemble, length head) and a length correction
    model.onnx        fp32 graph, dynamic batch and sequence axes
    model.int8.onnx   statically quantised graph; present only when it passed the export gate
    model.fp16.onnx   fp16 graph for GPU serving (`rlhf export --fp16`); present only when it passed
                      its gate (manifest gate.fp16 says why not)
    tokenizer.json    the fast tokenizer
    chat_template.jinja   the chat template, for a `chat` bundle only (manifest `input_format`)

Training writes it with :func:`write_manifest`; the service reads it with :func:`load_bundle`, which
refuses a bundle (raising a :class:`BundleError` subclass that names the problem) unless the format
version is known and every listed file exists and matches its sha256. Torch-free on purpose.

Error tree::

    BundleError
     ├── BundleNotFoundError     directory or manifest.json missing
     ├── ManifestError           manifest unreadable, wrong format/version, or fields invalid
     └── IntegrityError          a listed file is missing or its sha256 differs
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tokenizers import Tokenizer

from service.chat import ChatEncoder
from service.chat_template import ChatTemplate
from service.conversation import TemplateRenderError
from service.encoding import (
    CHAT_TRUNCATION_POLICY_NAME,
    TRUNCATION_POLICY_NAME,
    Encoder,
    InputFormat,
    PairEncoder,
    TruncationPolicy,
)

BUNDLE_FORMAT: Final = "reward-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
CHAT_TEMPLATE_NAME: Final = "chat_template.jinja"
MODEL_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}

Precision = Literal["fp32", "int8", "fp16"]
PrecisionChoice = Literal["auto", "fp32", "int8", "fp16"]  # what a service setting or request may ask
# The graph outputs, each [batch] (or [batch, 1]): `score` always, the others only in graphs whose
# manifest `heads` promise them (DESIGN.md, "Scores carry their own warning signs").
SCORE_OUTPUT: Final = "score"  # the served quality score (the mean of the quality heads)
UNCERTAINTY_OUTPUT: Final = "uncertainty"  # std across the quality heads, in raw score units
LENGTH_OUTPUT: Final = "length_score"  # the ODIN length head: a diagnostic, never the reward


class BundleError(Exception):
    """A bundle cannot be used; the message says what is wrong and where."""


class BundleNotFoundError(BundleError):
    pass


class ManifestError(BundleError):
    pass


class IntegrityError(BundleError):
    pass


class TruncationInfo(BaseModel):
    """`service.encoding` (pair) or `service.chat` (chat) truncation; ``min_question_tokens`` is the
    pair policy's (a chat bundle drops whole turns instead and writes 0)."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["question-left-then-answer-right", "turns-left-then-answer-right"] = (
        TRUNCATION_POLICY_NAME
    )
    max_length: int = Field(ge=8)
    min_question_tokens: int = Field(default=0, ge=0)


class ChatTemplateInfo(BaseModel):
    """The chat template of a `chat` bundle: the Jinja source is the file ``chat_template.jinja`` (its
    sha256 in ``files``); ``special_tokens`` are the variables transformers renders it with (the
    tokenizer's ``special_tokens_map``: ``bos_token``, ``eos_token``, ...)."""

    model_config = ConfigDict(extra="forbid")
    file: Literal["chat_template.jinja"] = CHAT_TEMPLATE_NAME
    special_tokens: dict[str, str] = Field(default_factory=dict)


class ScoreStats(BaseModel):
    """Train-set score distribution, used by the service to return normalised scores."""

    mean: float
    std: float = Field(gt=0)


class EvalInfo(BaseModel):
    dataset: str
    pairs: int = Field(ge=0)
    accuracy_fp32: float
    accuracy_int8: float | None = None


class Int8Info(BaseModel):
    """Whether the int8 graph shipped, and if not, why (a failed gate is reported, not hidden)."""

    shipped: bool
    reason: str
    method: str | None = None


class HeadsInfo(BaseModel):
    """The heads behind the graph's outputs (optional; a bundle without it has one quality head).

    ``quality`` > 1: an ensemble of quality heads, the graph outputs their mean as ``score`` and their
    std as ``uncertainty``; ``length``: an ODIN length head, output as ``length_score`` (a diagnostic).
    The service checks the graph has exactly the outputs this promises."""

    model_config = ConfigDict(extra="forbid")
    quality: int = Field(ge=1)
    length: bool = False


class LengthCorrectionInfo(BaseModel):
    """Post-hoc length correction (Huang et al. 2025), applied by the service before normalisation:

        corrected = score - slope * (answer_tokens - mean_length)

    ``answer_tokens`` is `service.encoding.EncodedPair.answer_tokens`; centring at the fit items' mean
    length keeps the corrected scores on the manifest's score mean. ``intercept`` and ``pearson``
    describe the fit (score ~ intercept + slope * tokens on ``fitted_on`` items) and are not applied."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["linear"]
    slope: float = Field(allow_inf_nan=False)
    intercept: float = Field(allow_inf_nan=False)
    unit: Literal["answer_tokens"]
    mean_length: float = Field(ge=0, allow_inf_nan=False)
    fitted_on: int = Field(ge=2)
    pearson: float | None = Field(default=None, ge=-1, le=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: Literal["reward-bundle"]
    format_version: int
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: str
    base_model: str
    max_length: int = Field(ge=8)
    truncation: TruncationInfo
    pad_token_id: int = Field(ge=0)
    input_names: list[str]
    score: ScoreStats
    eval: EvalInfo
    int8: Int8Info
    files: dict[str, str]
    training_config: dict[str, object] = Field(default_factory=dict)
    export_config: dict[str, object] = Field(default_factory=dict)
    heads: HeadsInfo | None = None  # None: one quality head, no length head (every older bundle)
    length_correction: LengthCorrectionInfo | None = None  # None: scores are served as the graph gives them
    input_format: InputFormat = "pair"  # every older bundle is a pair bundle
    chat_template: ChatTemplateInfo | None = None  # required for (and only for) input_format "chat"

    @model_validator(mode="after")
    def _format_is_consistent(self) -> Manifest:
        if self.input_format == "chat":
            if self.chat_template is None or CHAT_TEMPLATE_NAME not in self.files:
                raise ValueError(f"a chat bundle needs chat_template and {CHAT_TEMPLATE_NAME} in files")
            if self.truncation.policy != CHAT_TRUNCATION_POLICY_NAME:
                raise ValueError(f"a chat bundle truncates with {CHAT_TRUNCATION_POLICY_NAME!r}")
        else:
            if self.chat_template is not None:
                raise ValueError("chat_template is only for input_format 'chat'")
            if self.truncation.policy != TRUNCATION_POLICY_NAME:
                raise ValueError(f"a pair bundle truncates with {TRUNCATION_POLICY_NAME!r}")
        return self

    @property
    def chat_template_sha256(self) -> str | None:
        """The template's hash (from ``files``), reported by the service; None for a pair bundle."""
        return self.files.get(CHAT_TEMPLATE_NAME) if self.input_format == "chat" else None

    @property
    def output_names(self) -> list[str]:
        """The graph outputs the manifest promises: score, then uncertainty and length_score per `heads`."""
        heads = self.heads or HeadsInfo(quality=1)
        return (
            [SCORE_OUTPUT]
            + ([UNCERTAINTY_OUTPUT] if heads.quality > 1 else [])
            + ([LENGTH_OUTPUT] if heads.length else [])
        )

    @property
    def precisions(self) -> list[Precision]:
        return [p for p, name in MODEL_FILES.items() if name in self.files]  # type: ignore[misc]

    @property
    def truncation_policy(self) -> TruncationPolicy:
        return TruncationPolicy(self.max_length, self.truncation.min_question_tokens)


OPTIONAL_ENTRIES = ("heads", "length_correction", "chat_template")  # left out of manifest.json when absent


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest
    sha256: str  # hash of manifest.json, which itself pins every other file

    def model_path(self, precision: Precision) -> Path:
        if precision not in self.manifest.precisions:
            why = {
                "int8": f" ({self.manifest.int8.reason})",
                "fp16": " (exported without --fp16, or its graph failed the gate: manifest gate.fp16)",
            }.get(precision, "")
            raise BundleError(
                f"bundle {self.path} has no {precision} graph{why}; "
                f"available: {', '.join(self.manifest.precisions)}"
            )
        return self.path / MODEL_FILES[precision]

    def default_precision(self, device: Literal["cpu", "cuda"] = "cpu") -> Precision:
        """On CPU: int8 when it shipped (it passed the accuracy and batch-independence gate), else fp32.
        On a GPU: fp16 when it shipped, else fp32 (int8 QDQ kernels are CPU ones, and fp16 is what GPU
        matrix units are fast at)."""
        preferred = "fp16" if device == "cuda" else "int8"
        return preferred if preferred in self.manifest.precisions else "fp32"

    def encoder(self) -> Encoder:
        """The bundle's encoder (pair or chat, per the manifest), padding with the manifest's pad id."""
        m = self.manifest
        path = self.path / TOKENIZER_NAME
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception for a bad file
            raise IntegrityError(f"{path} is not a valid tokenizer: {exc}") from exc
        if m.input_format == "pair" or m.chat_template is None:
            return PairEncoder(tokenizer, m.truncation_policy, m.pad_token_id)
        source_path = self.path / m.chat_template.file
        try:
            template = ChatTemplate(source_path.read_text(encoding="utf-8"), m.chat_template.special_tokens)
        except (OSError, UnicodeDecodeError, TemplateRenderError, ValueError) as exc:
            raise IntegrityError(f"{source_path} is not a usable chat template: {exc}") from exc
        return ChatEncoder(tokenizer, template, m.truncation_policy, m.pad_token_id)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(bundle_dir: Path, fields: dict[str, object]) -> Manifest:
    """Hash every model/tokenizer file present in ``bundle_dir`` and write a validated manifest.

    ``fields`` holds everything but ``format``, ``format_version`` and ``files``.
    """
    files = {
        name: sha256_file(bundle_dir / name)
        for name in (TOKENIZER_NAME, CHAT_TEMPLATE_NAME, *MODEL_FILES.values())
        if (bundle_dir / name).is_file()
    }
    if MODEL_FILES["fp32"] not in files:
        raise IntegrityError(f"{bundle_dir / MODEL_FILES['fp32']} is missing: a bundle needs the fp32 graph")
    if TOKENIZER_NAME not in files:
        raise IntegrityError(f"{bundle_dir / TOKENIZER_NAME} is missing")
    try:
        manifest = Manifest(
            format=BUNDLE_FORMAT,
            format_version=FORMAT_VERSION,
            files=files,
            **fields,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise ManifestError(f"refusing to write an invalid manifest: {exc}") from exc
    absent = {name for name in OPTIONAL_ENTRIES if getattr(manifest, name) is None}  # as older bundles
    text = json.dumps(manifest.model_dump(mode="json", exclude=absent), indent=2, sort_keys=True)
    (bundle_dir / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate manifest.json without checking file hashes."""
    manifest_path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleNotFoundError(f"bundle directory {bundle_dir} does not exist")
    if not manifest_path.is_file():
        raise BundleNotFoundError(f"{manifest_path} is missing: not a reward bundle")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{manifest_path} must hold a JSON object")
    if raw.get("format") != BUNDLE_FORMAT:
        raise ManifestError(f"{manifest_path}: format is {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{manifest_path}: format_version {raw.get('format_version')!r} is not supported "
            f"(this service reads version {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(f"{manifest_path} has invalid fields: {exc}") from exc


def load_bundle(path: str | Path) -> Bundle:
    """Read the manifest and verify every file it lists; raise a BundleError naming the problem."""
    bundle_dir = Path(path)
    manifest = read_manifest(bundle_dir)
    for name, expected in manifest.files.items():
        file_path = bundle_dir / name
        if Path(name).name != name:
            raise ManifestError(f"manifest lists {name!r}: file names must not contain directories")
        if not file_path.is_file():
            raise IntegrityError(f"{file_path} is listed in the manifest but missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise IntegrityError(
                f"{file_path} is corrupt or was replaced: sha256 {actual[:12]}… "
                f"but the manifest says {expected[:12]}…"
            )
    if MODEL_FILES["fp32"] not in manifest.files or TOKENIZER_NAME not in manifest.files:
        raise ManifestError(f"{bundle_dir}: manifest must list {MODEL_FILES['fp32']} and {TOKENIZER_NAME}")
    return Bundle(bundle_dir, manifest, sha256_file(bundle_dir / MANIFEST_NAME))
