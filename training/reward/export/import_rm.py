"""`rlhf import-rm`: a Hugging Face reward model brought as is → a verified bundle, without training.

    result = import_checkpoint("models/my-rm", "bundles/my-rm", ImportConfig(data="pairs.jsonl"))

The checkpoint is a local ``AutoModelForSequenceClassification`` directory with one label (its
score) and a fast tokenizer (``tokenizer.json``, or slow files transformers converts once). It goes
through the export of a trained run (`build.export_model`) and the same gate: fp32 parity with
PyTorch, batch independence, int8 only when its own gate passes. What a run would have provided is
taken from the command instead:

- the pairs: ``data`` (default: the embedded hh-rlhf pairs), split deterministically; the held-out
  share (``eval_fraction``) is what the gate evaluates and the manifest's accuracy is measured on, the
  rest calibrates int8 and fits the length trend;
- the input format: ``chat`` when the checkpoint's tokenizer has a chat template, else ``pair``
  (``input_format`` overrides), with ``max_length`` as the truncation budget;
- the score mean/std the service normalises with: measured by the fp32 graph on the calibration
  answers (the manifest's gate says so: ``score_stats_measured``).

Refused with a `CheckpointError` that says why, before any slow work: not a model directory, not a
sequence classifier (a base LM would get a random head: train it with `rlhf train-rm` instead), more
than one label, weights missing from the checkpoint (they would be random), a head whose score
cannot be read from padded batches (pooling.py), no tokenizer or one that is not fast, a tokenizer
with more tokens than the model's embedding table, a chat format without a chat template, or a
``max_length`` the model cannot read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.reward.data import load_pairs, split_pairs
from training.reward.encoders import EncoderSourceError, model_encoder, resolve_input_format, tokenizer_dir
from training.reward.export.build import ExportResult, ExportSource, check_target, export_model
from training.reward.export.config import ImportConfig
from training.reward.export.gate import CheckpointError
from training.reward.export.progress import Progress
from training.reward.heads import HeadLayout, HeadLayoutError
from training.reward.pooling import PoolingError, classifier_head

log = logging.getLogger(__name__)
EMBEDDED_DATA = "embedded hh-rlhf-harmless-2000"


def import_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    config: ImportConfig | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Check, export and gate ``checkpoint`` into a bundle at ``out_dir``; raise an ExportError
    (CheckpointError, ParityError, ...) naming what failed, or a DataError for unreadable pairs."""
    config = config or ImportConfig()
    directory = Path(checkpoint)
    check_target(Path(out_dir), config)
    model = load_checkpoint(directory)
    tokenizer_files, encoder = checkpoint_encoder(directory, config)
    if model.config.pad_token_id is None:  # transformers' decoder heads refuse batches without one
        model.config.pad_token_id = encoder.pad_token_id
    check_vocabulary(model, encoder)
    check_max_length(model, config.max_length, encoder.pad_token_id)
    report = load_pairs(config.data)
    if len(report.pairs) < 2:
        raise CheckpointError(f"{report.source}: the gate needs at least 2 pairs, got {len(report.pairs)}")
    calibration_pool, eval_pool = split_pairs(report.pairs, config.eval_fraction, config.seed)
    data = config.data or EMBEDDED_DATA
    log.info(
        "importing %s (%s, %s format): %d held-out pairs, %d calibration pairs",
        directory,
        type(model).__name__,
        encoder.input_format,
        len(eval_pool),
        len(calibration_pool),
    )
    source = ExportSource(
        model_dir=directory,
        tokenizer_dir=tokenizer_files,
        encoder=encoder,
        eval_pool=eval_pool,
        calibration_pool=calibration_pool,
        name=directory.resolve().name,
        base_model=str(directory.resolve()),
        eval_dataset=f"{data}: held-out share (eval_fraction {config.eval_fraction}, seed {config.seed})",
        model=model,
    )
    return export_model(source, out_dir, config, progress)


def load_checkpoint(directory: Path) -> Any:
    """The checkpoint's one-label sequence classifier in float32, eval mode; CheckpointError otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory (no config.json)")
    try:
        hf_config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:  # unknown model_type, unreadable JSON
        raise CheckpointError(f"{directory}/config.json cannot be read by transformers: {exc}") from exc
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise CheckpointError(
            f"{directory} is not a sequence classifier (architectures: {architectures or 'none'}): "
            "loading it as one would add a random score head. A reward model is an "
            "AutoModelForSequenceClassification with one label; to make one from this model, train it: "
            f"rlhf train-rm --base-model {directory}"
        )
    try:
        layout = HeadLayout.of_config(hf_config)
    except HeadLayoutError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    if layout.is_plain and hf_config.num_labels != 1:
        raise CheckpointError(
            f"{directory} has {hf_config.num_labels} labels ({sorted(hf_config.id2label.values())}); a "
            "reward model has one, its score"
        )
    model, info = AutoModelForSequenceClassification.from_pretrained(
        directory, dtype=torch.float32, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{directory}: {len(missing)} weights are missing from the checkpoint and would be random "
            f"(e.g. {', '.join(missing[:3])})"
        )
    try:
        classifier_head(model)
    except PoolingError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    return model.eval()


def checkpoint_encoder(directory: Path, config: ImportConfig) -> tuple[Path, Any]:
    """(directory holding tokenizer.json and the template, the encoder) for the checkpoint and
    ``config.input_format`` (auto = chat when its tokenizer has a chat template).

    A directory without any tokenizer file is refused (`encoders.tokenizer_dir`, the check training
    shares): transformers would otherwise make an empty tokenizer from the model type, and every text
    would score the same."""
    try:
        files = tokenizer_dir(directory)
        input_format = resolve_input_format(files, config.input_format)
        encoder = model_encoder(files, input_format, config.max_length, config.min_question_tokens)
    except (EncoderSourceError, ValueError) as exc:  # ValueError: a truncation policy that cannot hold
        raise CheckpointError(f"{directory}: {exc}") from exc
    return files, encoder


def check_vocabulary(model: Any, encoder: Any) -> None:
    """Every id the tokenizer can produce must have a row in the model's embedding table; a
    tokenizer of another model would index past it (or score every text alike when empty)."""
    size = encoder.tokenizer.get_vocab_size(with_added_tokens=True)
    rows = model.get_input_embeddings().num_embeddings
    if size == 0 or size > rows:
        raise CheckpointError(
            f"the tokenizer has {size} tokens but the model's embedding table {rows} rows: not the "
            "tokenizer this model was trained with"
        )


def check_max_length(model: Any, max_length: int, token_id: int) -> None:
    """One forward of ``max_length`` tokens: a model whose position table is shorter fails here, with
    a clear error, instead of on the first long request in the service."""
    import torch

    ids = torch.full((1, max_length), token_id, dtype=torch.long)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (IndexError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"the model cannot read {max_length} tokens ({type(exc).__name__}: {str(exc)[:200]}); "
            "pass a smaller --max-length"
        ) from exc
