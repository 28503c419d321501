"""LoRA (peft) on a reward model's base: adapters on every linear layer of the body, the heads in full.

    model = add_reward_lora(load_reward_model(base, layout), config)     # config.lora_r > 0
    model = resume_reward_lora(load_reward_model(base, layout), checkpoint_dir)
    plain = merged(model)        # the final model: adapters merged, a plain transformers model again

Why: a decoder base (SmolLM2-135M) costs about ten times MiniLM per training step, and LoRA leaves
the base frozen but for low-rank updates, which cuts optimizer memory and step time on a CPU.

Which layers: every ``nn.Linear`` (and GPT-2's ``Conv1D``) outside the classifier head, found by
walking the model, so each family gets its own names without a table (Llama/Qwen2/Mistral:
``q/k/v/o_proj`` and ``gate/up/down_proj``; GPT-2: ``c_attn``, ``c_proj``, ``c_fc``; BERT: ``query``,
``key``, ``value``, ``dense``), as QLoRA recommends (all linear layers, not only q and v). The head
(``score``, ``classifier``: the top-level module holding the ``num_labels``-output layer) is fresh,
so it trains in full (peft ``modules_to_save``).

Checkpoints of a LoRA run hold the adapter and the head (peft's ``save_pretrained``); OUT/final is
always the merged model, so export, eval and `load_reward_model` never see peft.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from training.reward.config import RewardConfig
from training.reward.pooling import classifier_head

log = logging.getLogger(__name__)


def head_module_name(model: PreTrainedModel) -> str:
    """The top-level child module that holds the classifier head (``score``, ``classifier``)."""
    head = classifier_head(model)
    for name, module in model.named_modules():
        if module is head:
            return name.split(".")[0]
    raise ValueError(f"{type(model).__name__}: the classifier head is not one of its modules")


def lora_target_modules(model: PreTrainedModel) -> list[str]:
    """Full names of the linear layers LoRA adapts: every Linear/Conv1D outside the head module."""
    head = head_module_name(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and name.split(".")[0] != head
    ]


def add_reward_lora(model: PreTrainedModel, config: RewardConfig) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter of rank ``config.lora_r``; the head trains in full."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layer outside its head for LoRA to adapt")
    names = {type(m) for n, m in model.named_modules() if n in set(targets)}
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=[head_module_name(model)],
        fan_in_fan_out=Conv1D in names,  # GPT-2's Conv1D stores its weight transposed
        task_type="SEQ_CLS",
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    kinds = sorted({t.rsplit(".", 1)[-1] for t in targets})
    log.info(
        "LoRA r=%d on %d layers (%s): %d trainable of %d parameters (%.2f%%)",
        config.lora_r,
        len(targets),
        ", ".join(kinds),
        trainable,
        total,
        100 * trainable / total,
    )
    return peft_model


def resume_reward_lora(model: PreTrainedModel, checkpoint: Path) -> Any:
    """``model`` (the base with its heads, as the run started) with the adapter and head of a LoRA
    checkpoint, trainable again."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model: Any) -> PreTrainedModel:
    """A plain transformers model: a LoRA model's adapters merged into its weights (and its trained
    head in place of the original), anything else unchanged. Merges in place: call after training."""
    if is_lora(model):
        return model.merge_and_unload()
    return model
