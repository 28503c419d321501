"""Reward logits [b, K] read where a sequence classifier's score belongs: the one forward training,
export and scoring share.

    logits = reward_logits(model, input_ids=ids, attention_mask=mask)            # [b, K]
    logits = reward_logits(model, **model_inputs(batch, names, device))          # BERT adds token_type_ids

Why: transformers' decoder classifiers (Llama, Qwen2/3, Mistral, Gemma, GPT-2, ...) apply their
``score`` head at every position and keep the row's last token *that is not the config's
pad_token_id*. That id is often wrong for a reward model: SmolLM2's config says 2 (``<|im_end|>``,
also its EOS, which ends every chat turn and may end the text), while its tokenizer pads with 0; so
transformers reads a padding position in every padded row, or skips a real EOS at the end of a row.
Here the score is read at the last position whose attention mask is 1, from the mask alone, which is
right for right and left padding and never looks at ids.

How the family is decided, without a list of model names: by what the classifier head returns. The
head is the model's last ``Linear`` with ``num_labels`` outputs (``score``, ``classifier``,
``classifier.out_proj``). A head applied per position returns [b, seq, K]: a forward hook replaces
that output by the value at each row's last real position, broadcast over the sequence, so whatever
position transformers' own pooling then picks, it gets that value. A head applied to an already
pooled vector returns [b, K]: the model pooled itself (BERT, RoBERTa, DeBERTa-v2, ModernBERT: the
CLS token or a masked mean, both independent of padding) and its ``.logits`` are returned as they
are, through the same operations as before (the MiniLM graph is unchanged). Anything else is refused
with a :class:`PoolingError`. Encoder-decoder classifiers (BART, T5: pooled at EOS ids) and
XLNet-style "last index" summaries pool in ways that depend on padding, so they are refused too.

Why a hook rather than calling the backbone and the head directly: the model's own forward stays the
one called, so DistributedDataParallel (which must see the forward to synchronise gradients), peft
wrappers and whatever a family puts between its backbone and its head keep working unchanged; and
the traced ONNX graph is that forward with one ArgMax/Gather/Expand more (dynamic axes preserved).
"""

from __future__ import annotations

from typing import Any

import torch


class PoolingError(ValueError):
    """The model's classifier head is not one whose score can be read correctly from padded batches."""


def classifier_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The sequence classifier's output layer: the last ``Linear`` with ``config.num_labels`` outputs.

    Raises PoolingError for a model that is not a supported sequence classifier."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    name = type(model).__name__
    labels = getattr(config, "num_labels", None)
    if labels is None:
        raise PoolingError(f"{name} has no config.num_labels: not a sequence classifier")
    if getattr(config, "is_encoder_decoder", False):
        raise PoolingError(
            f"{name} is an encoder-decoder classifier (it pools at EOS ids, which padded batches "
            "cannot rely on): not supported; use a decoder (Llama, Qwen2, GPT-2, ...) or an encoder "
            "(BERT, RoBERTa, DeBERTa-v2, ModernBERT)"
        )
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == labels]
    if not found:
        raise PoolingError(
            f"{name} has no linear layer with {labels} outputs: not a supported classifier head"
        )
    return found[-1]


def last_real_position(attention_mask: torch.Tensor) -> torch.Tensor:
    """[b] index of each row's last position whose mask is 1 (0 for an all-padding row).

    ArgMax over arange * mask: the largest masked-in index; traces to ONNX Range/Mul/ArgMax with
    dynamic axes. int32 like transformers' own pooling (onnxruntime's ArgMax takes it)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device, dtype=torch.int32)
    return (positions * attention_mask.to(torch.int32)).argmax(dim=-1)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, whose head and config we inspect."""
    if isinstance(model, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def reward_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **rest: Any
) -> torch.Tensor:
    """Logits [b, K] of ``model`` with each row's score read at its last real token (decoders) or
    at the model's own pooled position (encoders); see the module docstring. ``rest``: further model
    inputs (token_type_ids). ``model`` may be wrapped in DistributedDataParallel."""
    inner = _unwrap(model)
    head = classifier_head(inner)
    config = getattr(inner, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if get_text_config is not None else config
    sequence = input_ids.shape[1]
    if getattr(text_config, "pad_token_id", 0) is None and input_ids.shape[0] > 1:
        raise PoolingError(
            f"{type(inner).__name__} has config.pad_token_id None, so transformers refuses batches of "
            "more than one row; any id will do (the score is read from the attention mask): set "
            "model.config.pad_token_id (load_reward_model does)"
        )

    def read_last_real(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if output.dim() == 2:  # applied to a pooled vector: the model pooled itself
            if getattr(config, "summary_type", None) == "last":
                raise PoolingError(
                    f"{type(inner).__name__} pools at the last index whatever the padding (summary "
                    "'last'): not supported"
                )
            return None
        if output.dim() != 3 or output.shape[1] != sequence:
            raise PoolingError(
                f"{type(inner).__name__}'s classifier returns shape {tuple(output.shape)} for "
                f"{tuple(input_ids.shape)} inputs; expected [batch, K] (pooled) or [batch, sequence, K] "
                "(per position)"
            )
        last = last_real_position(attention_mask.to(output.device))  # [b]
        index = last.view(-1, 1, 1).expand(-1, 1, output.shape[-1])  # [b, 1, K]
        return output.gather(1, index).expand_as(output)  # [b, seq, K]: every position holds the score

    handle = head.register_forward_hook(read_last_real)
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask, **rest).logits  # [b, K]
    finally:
        handle.remove()
