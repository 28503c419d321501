"""Sampling trajectories: k answers to one prompt, each a sequence of (state, action, logprob).

    groups = sample_groups(policy, prompts, k=4, max_new_tokens=40, temperature=1.0, top_p=1.0)

State S_t = prompt + the answer's first t tokens; action A_t = the next token; logprob = log pi(A_t|S_t)
under the sampling policy softmax(logits / temperature). Generation stops at EOS (the EOS token is the
last action of a finished answer) or after max_new_tokens; positions after EOS are padding, mask False.
The k answers to a prompt share the prompt; prompts sampled together are left-padded (``sample_groups``),
but each Group keeps its own unpadded prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from training.policy.policy import Policy, batch_prompt_cache, cache_kwarg, torch_threads
from training.policy.prompts import Prompt


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
def sample_groups(
    policy: Policy,
    prompts: Sequence[Prompt],
    k: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    threads: int = 0,
) -> list[Group]:
    """k answers to each prompt, all prompts decoded together in one ``model.generate`` call.

    Decoding is one forward pass per new token whatever the batch, so one batch of n * k rows costs
    little more per token than a batch of k rows, and takes n times fewer passes than one prompt
    after the other (what that saves: README, "Policy optimisation": "Prompts decoded together").
    Prompts of different lengths are left-padded (masked, positions
    counted from each prompt's first real token); each prompt is prefilled once and its keys/values
    shared by its k rows. Log-probs come from the raw logits of each step, and each returned Group
    holds its own unpadded prompt, so the update needs no padding.
    """
    if not prompts:
        return []
    model: PreTrainedModel = policy.model
    encoded = [encode_prompt(policy, prompt).to(policy.device) for prompt in prompts]
    input_ids, attention_mask = _left_pad(encoded, policy.pad_token_id)
    was_training = model.training
    model.eval()  # no dropout while sampling: the sampled policy is the one being trained
    try:
        with torch_threads(threads):
            out = _generate(
                model, input_ids, attention_mask, k, max_new_tokens, temperature, top_p, greedy, policy
            )
    finally:
        model.train(was_training)
    actions = out.sequences[:, input_ids.shape[1] :]  # [n * k, T]
    logits = torch.stack(out.logits, dim=1).float() / temperature  # [n * k, T, V] raw logits of each step
    mask, finished = eos_mask(actions, policy.eos_token_ids)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1) * mask
    del logits
    groups = []
    for i, (prompt, prompt_ids) in enumerate(zip(prompts, encoded, strict=True)):
        rows = slice(i * k, (i + 1) * k)
        t_len = max(int(mask[rows].sum(dim=1).max()), 1)  # drop columns that are padding in every row
        group_actions, group_mask = actions[rows, :t_len], mask[rows, :t_len]
        texts = [
            str(policy.tokenizer.decode(row[: int(m.sum())], skip_special_tokens=True)).strip()
            for row, m in zip(group_actions, group_mask, strict=True)
        ]
        groups.append(
            Group(
                prompt, prompt_ids, group_actions, logprobs[rows, :t_len], group_mask, texts, finished[rows]
            )
        )
    return groups


def _left_pad(encoded: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, L] ids and attention mask, each prompt right-aligned so that all answers start at column L."""
    width = max(int(ids.shape[0]) for ids in encoded)
    device = encoded[0].device
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long, device=device)
    for row, ids in enumerate(encoded):
        input_ids[row, width - ids.shape[0] :] = ids
        attention_mask[row, width - ids.shape[0] :] = 1
    return input_ids, attention_mask


def _generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    policy: Policy,
) -> Any:
    # each prompt runs once and its cache serves its k rows (generate would otherwise prefill it k times)
    cache = batch_prompt_cache(model, input_ids, attention_mask, k)
    return model.generate(  # type: ignore[operator]
        input_ids=input_ids.repeat_interleave(k, dim=0),
        attention_mask=attention_mask.repeat_interleave(k, dim=0),
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
