"""One policy-gradient update on a tiny model: log-probs move in the direction of the advantage;
failed rewards are masked out (the update equals the one without those rows, not a zero reward)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from tests.training.policy_helpers import make_tiny_policy_dir, sample_group, tiny_config, write_prompts
from training.policy.config import PolicyConfig
from training.policy.policy import Policy, action_logprobs, load_policy
from training.policy.prompts import load_prompts_file
from training.policy.rollout import Group
from training.policy.update import policy_update

NAN = float("nan")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    root = tmp_path_factory.mktemp("update")
    model_dir = make_tiny_policy_dir(root / "model")
    prompts_file = write_prompts(root / "p.jsonl")
    return model_dir, prompts_file, load_prompts_file(prompts_file)


def _policy(setup: tuple[Path, Path, list], **overrides: object) -> tuple[Policy, PolicyConfig]:
    model_dir, prompts_file, _ = setup
    config = tiny_config(model_dir, prompts_file.parent / "out", prompts_file, **overrides)
    return load_policy(config), config


def _groups(policy: Policy, prompts: list, n: int, k: int, seed: int = 0) -> list[Group]:
    torch.manual_seed(seed)
    return [sample_group(policy, p, k, max_new_tokens=6) for p in prompts[:n]]


def _seq_logp(policy: Policy, group: Group) -> torch.Tensor:
    with torch.no_grad():
        logp, _ = action_logprobs(policy.model, group.prompt_ids, group.actions, group.mask)
    return logp.sum(dim=1)  # [k]


@pytest.mark.parametrize(
    ("estimator", "full_finetune"), [("rloo", False), ("reinforce", False), ("group_norm", True)]
)
def test_update_raises_logprob_of_positive_advantage_and_lowers_negative(
    setup: tuple[Path, Path, list], estimator: str, full_finetune: bool
) -> None:
    # full fine-tuning without a KL penalty keeps no frozen copy of the model
    kl_coef = 0.0 if full_finetune else 0.05
    policy, config = _policy(
        setup, estimator=estimator, full_finetune=full_finetune, lr=5e-3, kl_coef=kl_coef
    )
    groups = _groups(policy, setup[2], n=2, k=2)
    before = [_seq_logp(policy, g) for g in groups]
    # answer 0 of each prompt is good, answer 1 is bad: RLOO advantages +2 / -2, reinforce +1 / -1
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0])
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr)
    stats = policy_update(policy, optimizer, groups, rewards, config)
    after = [_seq_logp(policy, g) for g in groups]
    for b, a in zip(before, after, strict=True):
        assert a[0] > b[0], f"{estimator}: log-prob of the positive-advantage answer did not rise"
        assert a[1] < b[1], f"{estimator}: log-prob of the negative-advantage answer did not fall"
    assert stats.usable == 4 and stats.grad_norm > 0
    if full_finetune:  # no KL penalty asked for: no frozen copy kept, KL not measured
        assert math.isnan(stats.kl)
    else:  # sampled before the step: policy == reference (adapter B starts at 0)
        assert stats.kl == pytest.approx(0.0, abs=1e-4)


def test_lora_reference_is_the_adapter_switched_off(setup: tuple[Path, Path, list]) -> None:
    policy, config = _policy(setup, estimator="reinforce", lr=5e-2)
    groups = _groups(policy, setup[2], n=1, k=2)
    with policy.reference() as ref:
        ref_before = _seq_logp(policy, groups[0]) if ref is policy.model else None
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr)
    policy_update(policy, optimizer, groups, torch.tensor([1.0, -1.0]), config)
    with policy.reference():
        ref_after = _seq_logp(policy, groups[0])
    assert ref_before is not None and torch.allclose(ref_before, ref_after, atol=1e-5)
    assert not torch.allclose(_seq_logp(policy, groups[0]), ref_after, atol=1e-4)  # the policy moved
    # the next step's KL to the reference is now positive on fresh samples
    fresh = _groups(policy, setup[2], n=2, k=2, seed=1)
    stats = policy_update(policy, optimizer, fresh, torch.tensor([0.5, 0.1, 0.2, 0.3]), config)
    assert stats.kl != 0.0


def test_failed_rewards_are_masked_not_zero(setup: tuple[Path, Path, list]) -> None:
    """RLOO with a NaN reward: its group has one valid answer left, so no baseline and no gradient:
    the update equals the one on the other group alone, and differs from scoring the failure as 0."""
    base, config = _policy(setup, estimator="rloo", full_finetune=True, max_grad_norm=1e9)
    groups = _groups(base, setup[2], n=2, k=2)

    def run(rewards: list[float], use_groups: list[Group], usable: int) -> dict[str, torch.Tensor]:
        policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.device, is_lora=False)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
        stats = policy_update(policy, optimizer, use_groups, torch.tensor(rewards), config)
        assert stats.usable == usable
        return {n: p.detach().clone() for n, p in policy.model.named_parameters()}

    masked = run([1.0, NAN, 0.5, -0.5], groups, usable=2)
    dropped = run([0.5, -0.5], groups[1:], usable=2)
    zeroed = run([1.0, 0.0, 0.5, -0.5], groups, usable=4)
    for name in masked:
        assert torch.allclose(masked[name], dropped[name], atol=1e-6), name
    assert any(not torch.allclose(masked[n], zeroed[n], atol=1e-7) for n in masked), "NaN was treated as 0"


def test_all_rewards_failed_means_no_step(setup: tuple[Path, Path, list]) -> None:
    policy, config = _policy(setup)
    groups = _groups(policy, setup[2], n=1, k=2)
    weights = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr)
    stats = policy_update(policy, optimizer, groups, torch.tensor([NAN, NAN]), config)
    assert stats.usable == 0
    for n, p in policy.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, weights[n])


def test_ppo_epochs_take_several_clipped_steps(setup: tuple[Path, Path, list]) -> None:
    policy, config = _policy(setup, estimator="rloo", ppo_epochs=3, clip_eps=0.1, lr=1e-2)
    groups = _groups(policy, setup[2], n=2, k=2)
    before = [_seq_logp(policy, g) for g in groups]
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr)
    stats = policy_update(policy, optimizer, groups, torch.tensor([1.0, -1.0, -1.0, 1.0]), config)
    after = [_seq_logp(policy, g) for g in groups]
    assert after[0][0] > before[0][0] and after[1][1] > before[1][1]
    assert 0.0 <= stats.clip_fraction <= 1.0
    assert optimizer.state[policy.trainable_parameters()[0]]["step"] == 3  # one AdamW step per epoch


def test_shared_prompt_cache_gives_the_full_forward_logprobs_and_gradients(
    setup: tuple[Path, Path, list],
) -> None:
    """action_logprobs runs the prompt once for the k answers; a plain [k, P + T] forward must agree."""
    policy, _ = _policy(setup)
    with torch.no_grad():  # a non-trivial adapter, so the LoRA path of the cached prompt is exercised
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    group = _groups(policy, setup[2], n=1, k=3)[0]
    k, t_len = group.actions.shape
    prompt = group.prompt_ids.unsqueeze(0).expand(k, -1)
    full = policy.model(
        input_ids=torch.cat([prompt, group.actions], dim=1),
        attention_mask=torch.cat([torch.ones_like(prompt), group.mask.long()], dim=1),
    )
    logits = full.logits[:, -t_len - 1 : -1].float()
    expected = torch.log_softmax(logits, -1).gather(-1, group.actions.unsqueeze(-1)).squeeze(-1) * group.mask
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in policy.trainable_parameters()]
    policy.model.zero_grad()
    logp, _ = action_logprobs(policy.model, group.prompt_ids, group.actions, group.mask)
    logp.sum().backward()
    assert torch.allclose(logp, expected, atol=1e-5)
    assert torch.allclose(group.logprobs, expected.detach(), atol=1e-4)  # the sampler's cached prompt too
    for got, want in zip((p.grad for p in policy.trainable_parameters()), expected_grads, strict=True):
        assert got is not None and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
