"""A model directory → the encoder its reward model reads with: one place for training, export and import.

    fmt = resolve_input_format(model_dir, "auto")           # "chat" when the tokenizer has a chat template
    encoder = model_encoder(model_dir, fmt, max_length=512)  # a PairEncoder or a ChatEncoder
    encoder = run_encoder(run / "final")                     # a training run: its config's format and length
    prepare_run_tokenizer(base_dir, "pair", run / "tokenizer")  # what a new run encodes with and ships
    write_encoder_files(model_dir, encoder, bundle_dir)      # tokenizer.json (+ chat_template.jinja)
    manifest.update(encoder_manifest_fields(encoder))        # input_format, truncation, pad id, template

Why one module: a reward model scores garbage, without any error, when it is served with another
tokenisation than it was trained with. Training (`train.py`), the export gate (`export/build.py`),
`rlhf import-rm` and the bundle all build their encoder here from the same files, with the classes
the service runs (`service.encoding.PairEncoder`, `service.chat.ChatEncoder`), so the ids of a
conversation are the same everywhere by construction.

What a model directory must hold: ``tokenizer.json`` (a fast tokenizer); for ``chat``, its chat
template (``chat_template.jinja``, else ``chat_template`` in ``tokenizer_config.json``) and the
special tokens the template is rendered with (``tokenizer_config.json``: ``bos_token``,
``eos_token``, ...), read as transformers reads them (`service.chat_template.read_chat_template`).
A training run's final directory carries the same files (:data:`TOKENIZER_FILES`), so the run and
its base model give the same encoder.

A decoder tokenizer (GPT-2, Qwen2, SmolLM2 BPEs) adds no token around a pair: question and answer
would be read as one run of text, the score at the answer's last token, and an empty pair would be no
ids at all. A training run in the ``pair`` format therefore ends each pair with the tokenizer's
end-of-text token (:func:`prepare_run_tokenizer`), as decoder reward models are usually trained (the
score is read at the EOS); the rule is written into the run's ``tokenizer.json`` (its post-processor),
so the bundle's encoder, built from that file alone, does the same. Tokenizers that already frame a
pair (BERT's ``[CLS] q [SEP] a [SEP]``) are left byte for byte as they are.

The pad id: None picks the encoder's default (a chat template's ``pad_token``, else the tokenizer's
padding or a pad-like token); the bundle then keeps that one id. It never changes a score: padding is
masked, and a score is read at each row's last real token.

torch-free; transformers is imported only to convert a hub name's (or a slow-only) tokenizer once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Final

from tokenizers import Tokenizer, processors

from service.bundle import CHAT_TEMPLATE_NAME, TOKENIZER_NAME
from service.chat import ChatEncoder
from service.chat_template import ChatTemplate, read_chat_template
from service.conversation import TemplateRenderError
from service.encoding import Encoder, InputFormat, PairEncoder, TruncationPolicy
from training.reward.config import CONFIG_NAME, INPUT_FORMATS, RewardConfig

__all__ = [
    "INPUT_FORMATS",
    "TOKENIZER_FILES",
    "TOKENIZER_SOURCES",
    "EncoderSourceError",
    "chat_template_of",
    "encoder_manifest_fields",
    "model_encoder",
    "prepare_run_tokenizer",
    "resolve_input_format",
    "run_encoder",
    "tokenizer_dir",
    "tokenizer_files",
    "write_encoder_files",
]

# End-of-text tokens of the common decoder vocabularies, tried when tokenizer_config.json names none.
END_TOKENS: Final = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>")
# What a model directory's tokenizer consists of for us: copied into a training run's final directory
# (and checkpoints) whenever present, so the final directory is itself a model directory.
TOKENIZER_FILES: Final = (
    TOKENIZER_NAME,
    "tokenizer_config.json",
    "special_tokens_map.json",
    CHAT_TEMPLATE_NAME,
)
# Files a tokenizer can be loaded from: a fast tokenizer, or the slow files transformers converts to one
# (WordPiece, BPE, SentencePiece under the names BERT, GPT-2, Llama, T5, DeBERTa-v2/v3 and XLM-R use).
TOKENIZER_SOURCES: Final = (
    TOKENIZER_NAME,
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "spm.model",
    "sentencepiece.bpe.model",
)


class EncoderSourceError(ValueError):
    """A model directory cannot give the encoder asked for; the message names the file or setting."""


def tokenizer_dir(name_or_path: str | Path, cache: str | Path = ".cache/tokenizers") -> Path:
    """A directory holding ``tokenizer.json`` (and the chat template, if any) for a model.

    A local directory with a ``tokenizer.json`` is returned as is. Anything else (a hub name, a
    directory with slow tokenizer files only) is loaded once with transformers' AutoTokenizer and
    saved under ``cache`` (tokenizer.json, tokenizer_config.json, chat template).

    Refused, before anything is cached: a local directory with none of :data:`TOKENIZER_SOURCES`,
    and a loaded tokenizer whose vocabulary holds nothing but special tokens. transformers 5 builds
    such a tokenizer from the model type alone when the files are missing, and every text would
    then encode to the same few ids: training and `rlhf import-rm` share this one check."""
    local = Path(name_or_path)
    if (local / TOKENIZER_NAME).is_file():
        return local
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_SOURCES):
        raise EncoderSourceError(
            f"{local} has no tokenizer (none of {', '.join(TOKENIZER_SOURCES)}): copy the tokenizer "
            "the model was trained with into it"
        )
    target = Path(cache) / str(name_or_path).strip("/").replace("/", "--")
    if (target / TOKENIZER_NAME).is_file():
        return target
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise EncoderSourceError(f"{name_or_path}: no tokenizer found ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderSourceError(f"{name_or_path} has no fast tokenizer; a tokenizer.json is required")
    if not set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens):
        raise EncoderSourceError(
            f"{name_or_path}: its tokenizer has no vocabulary besides its special tokens "
            f"({', '.join(tokenizer.all_special_tokens) or 'none'}): not the tokenizer of a trained model"
        )
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def tokenizer_files(model_dir: str | Path) -> list[Path]:
    """The :data:`TOKENIZER_FILES` present in ``model_dir`` (tokenizer.json is required)."""
    directory = Path(model_dir)
    if not (directory / TOKENIZER_NAME).is_file():
        raise EncoderSourceError(f"{directory / TOKENIZER_NAME} is missing: a fast tokenizer is required")
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def chat_template_of(model_dir: str | Path) -> ChatTemplate | None:
    """The directory's chat template with its special tokens, or None when it has none."""
    try:
        return read_chat_template(model_dir)
    except (
        TemplateRenderError
    ) as exc:  # an unreadable tokenizer_config.json, a template that does not compile
        raise EncoderSourceError(f"{model_dir}: {exc}") from exc


def resolve_input_format(model_dir: str | Path, requested: str) -> InputFormat:
    """``auto`` → ``chat`` when the directory's tokenizer has a chat template, else ``pair``;
    ``chat`` without a template is an error; ``pair`` is always possible."""
    if requested not in INPUT_FORMATS:
        raise EncoderSourceError(f"input format {requested!r}: expected one of {', '.join(INPUT_FORMATS)}")
    if requested == "pair":
        return "pair"
    has_template = chat_template_of(model_dir) is not None
    if requested == "chat" and not has_template:
        raise EncoderSourceError(
            f"input format 'chat' needs a chat template, and {model_dir} has none "
            f"(no {CHAT_TEMPLATE_NAME}, no chat_template in tokenizer_config.json); use pair or auto"
        )
    return "chat" if has_template else "pair"


def model_encoder(
    model_dir: str | Path,
    input_format: str,
    max_length: int,
    min_question_tokens: int = 32,
    pad_token_id: int | None = None,
) -> Encoder:
    """The encoder of ``input_format`` (``pair`` or ``chat``; resolve ``auto`` first with
    :func:`resolve_input_format`) for the tokenizer (and template) in ``model_dir``.

    ``min_question_tokens`` is the pair policy's; a chat encoder drops whole turns instead and gets
    0, which is what its bundle's manifest records. ``pad_token_id`` None = the encoder's default."""
    tokenizer_json = tokenizer_files(model_dir)[0]
    if input_format == "pair":
        return PairEncoder.from_file(
            tokenizer_json, TruncationPolicy(max_length, min_question_tokens), pad_token_id
        )
    if input_format != "chat":
        raise EncoderSourceError(f"input format {input_format!r}: expected pair or chat")
    template = chat_template_of(model_dir)
    if template is None:
        raise EncoderSourceError(f"{model_dir} has no chat template: it cannot encode the chat format")
    return ChatEncoder.from_file(tokenizer_json, template, TruncationPolicy(max_length, 0), pad_token_id)


def run_encoder(final_dir: str | Path) -> Encoder:
    """The encoder a training run trained with, from its final directory (or a checkpoint):
    ``reward_config.json`` gives the format (a run saves the one it resolved; a run saved before
    the format existed trained ``pair``) and the truncation, the directory its tokenizer files."""
    directory = Path(final_dir)
    config = RewardConfig.load(directory / CONFIG_NAME)
    input_format = resolve_input_format(directory, config.input_format)
    return model_encoder(directory, input_format, config.max_length, config.min_question_tokens)


def write_encoder_files(model_dir: str | Path, encoder: Encoder, bundle_dir: str | Path) -> None:
    """Copy ``tokenizer.json`` into a bundle, and for a chat encoder write its template as
    ``chat_template.jinja`` (the manifest's `write_manifest` hashes both)."""
    out = Path(bundle_dir)
    shutil.copyfile(tokenizer_files(model_dir)[0], out / TOKENIZER_NAME)
    if isinstance(encoder, ChatEncoder):
        (out / CHAT_TEMPLATE_NAME).write_text(encoder.template.source, encoding="utf-8")


def encoder_manifest_fields(encoder: Encoder) -> dict[str, object]:
    """The manifest fields that describe how to encode for the bundle: ``input_format``,
    ``max_length``, ``truncation``, ``pad_token_id`` and, for chat, ``chat_template`` (its special
    tokens; the source is the file :func:`write_encoder_files` wrote). ``Bundle.encoder()`` rebuilds
    the same encoder from them."""
    policy = encoder.policy
    chat = (
        {"file": CHAT_TEMPLATE_NAME, "special_tokens": encoder.template.special_tokens}
        if isinstance(encoder, ChatEncoder)
        else None
    )
    return {
        "input_format": encoder.input_format,
        "max_length": policy.max_length,
        "truncation": {
            "policy": encoder.truncation_policy_name,
            "max_length": policy.max_length,
            "min_question_tokens": policy.min_question_tokens,
        },
        "pad_token_id": encoder.pad_token_id,
        "chat_template": chat,
    }


def end_token(model_dir: str | Path, tokenizer: Tokenizer) -> tuple[str, int] | None:
    """(token, id) that ends a text for this tokenizer: ``eos_token`` of ``tokenizer_config.json``,
    else the first of :data:`END_TOKENS` in the vocabulary; None when there is none."""
    config_path = Path(model_dir) / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderSourceError(f"{config_path} is unreadable: {exc}") from exc
    named = config.get("eos_token") if isinstance(config, dict) else None
    if isinstance(named, dict):
        named = named.get("content")
    for token in ([named] if isinstance(named, str) else []) + list(END_TOKENS):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, token_id
    return None


def prepare_run_tokenizer(base_tokenizer_dir: str | Path, input_format: str, target: str | Path) -> Path:
    """Write the tokenizer directory a training run encodes with and ships (``OUT/tokenizer``).

    The base's :data:`TOKENIZER_FILES`, as they are, but for the ``pair`` format on a tokenizer whose
    pair template adds no token: its ``tokenizer.json`` then gets a post-processor that ends every
    pair (and single text) with the end-of-text token (module docstring). Written to a temporary
    directory and renamed; returns ``target``."""
    out = Path(target)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in tokenizer_files(base_tokenizer_dir):
        shutil.copyfile(path, tmp / path.name)
    if input_format == "pair":
        tokenizer = Tokenizer.from_file(str(tmp / TOKENIZER_NAME))
        if tokenizer.num_special_tokens_to_add(is_pair=True) == 0:
            end = end_token(base_tokenizer_dir, tokenizer)
            if end is None:
                raise EncoderSourceError(
                    f"{base_tokenizer_dir}: the tokenizer adds no token around a pair and has no "
                    f"end-of-text token (no eos_token in tokenizer_config.json, none of {', '.join(END_TOKENS)}); "
                    "name one in tokenizer_config.json or train in the chat format"
                )
            token, token_id = end
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"$A:0 {token}:0", pair=f"$A:0 $B:1 {token}:1", special_tokens=[(token, token_id)]
            )
            tokenizer.save(str(tmp / TOKENIZER_NAME))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
