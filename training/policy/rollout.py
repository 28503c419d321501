"""Sampling trajectories: k answers to one prompt, each a sequence of (state, action, logprob).

State S_t = prompt + the answer's first t tokens; action A_t = the next token; logprob = log pi(A_t|S_t)
under the sampling policy softmax(logits / temperature). Generation stops at EOS (the EOS token is the
last action of a finished answer) or after max_new_tokens; positions after EOS are padding, mask False.
The k answers to a prompt share the prompt, so a group needs no left padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from training.policy.policy import Policy, cache_kwarg, prompt_cache, torch_threads
from training.policy.prompts import Prompt


@dataclass(frozen=True)
class Trajectory:
    """One answer as an RL trajectory (views into its group's tensors)."""

    prompt_ids: torch.Tensor  # [P]
    actions: torch.Tensor  # [T] next tokens, padded after EOS
    logprobs: torch.Tensor  # [T] log pi(A_t | S_t) at sampling time, 0 on padding
    mask: torch.Tensor  # [T] bool, True up to and including EOS
    text: str  # decoded answer (special tokens removed)

    def state(self, t: int) -> torch.Tensor:
        """S_t = prompt + the first t actions. [P + t]"""
        return torch.cat([self.prompt_ids, self.actions[:t]])

    def __len__(self) -> int:
        return int(self.mask.sum())


@dataclass
class Group:
    """The k answers sampled for one prompt."""

    prompt: Prompt
    prompt_ids: torch.Tensor  # [P]
    actions: torch.Tensor  # [k, T]
    logprobs: torch.Tensor  # [k, T] sampling-time log-probs (the PPO "old" policy)
    mask: torch.Tensor  # [k, T] bool
    texts: list[str]
    finished: torch.Tensor  # [k] bool: ended with EOS (False = cut at max_new_tokens)

    def trajectories(self) -> list[Trajectory]:
        return [
            Trajectory(self.prompt_ids, self.actions[i], self.logprobs[i], self.mask[i], self.texts[i])
            for i in range(self.actions.shape[0])
        ]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.long().sum(dim=1)  # [k]


def encode_prompt(policy: Policy, prompt: Prompt) -> torch.Tensor:
    """Chat template with the generation prompt -> token ids [P]."""
    text = policy.tokenizer.apply_chat_template(prompt.chat(), add_generation_prompt=True, tokenize=False)
    ids = policy.tokenizer(str(text), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eos_mask(actions: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real tokens (up to and including the first EOS) and whether each row hit EOS.

    actions: [k, T] -> (mask [k, T] bool, finished [k] bool).
    """
    is_eos = torch.isin(actions, torch.tensor(eos_ids, device=actions.device))  # [k, T]
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS strictly before t
    return eos_before == 0, is_eos.any(dim=1)


@torch.no_grad()
def sample_group(
    policy: Policy,
    prompt: Prompt,
    k: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    threads: int = 0,
) -> Group:
    """k answers to one prompt with model.generate; log-probs from the raw logits of each step."""
    model: PreTrainedModel = policy.model
    prompt_ids = encode_prompt(policy, prompt).to(policy.device)
    was_training = model.training
    model.eval()  # no dropout while sampling: the sampled policy is the one being trained
    try:
        with torch_threads(threads):
            out = _generate(model, prompt_ids, k, max_new_tokens, temperature, top_p, greedy, policy)
    finally:
        model.train(was_training)
    actions = out.sequences[:, prompt_ids.shape[0] :]  # [k, T]
    logits = torch.stack(out.logits, dim=1).float() / temperature  # [k, T, V] raw logits of each step
    mask, finished = eos_mask(actions, policy.eos_token_ids)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1) * mask
    texts = [
        str(policy.tokenizer.decode(row[: int(m.sum())], skip_special_tokens=True)).strip()
        for row, m in zip(actions, mask, strict=True)
    ]
    return Group(prompt, prompt_ids, actions, logprobs, mask, texts, finished)


def _generate(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    policy: Policy,
) -> Any:
    # the prompt runs once and its cache serves the k rows (generate would otherwise prefill it k times)
    cache = prompt_cache(model, prompt_ids, k)
    input_ids = prompt_ids.unsqueeze(0).expand(k, -1)
    return model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{cache_kwarg(model): cache},
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        eos_token_id=policy.eos_token_ids,
        pad_token_id=policy.pad_token_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
