"""Trajectories: states/actions/logprobs consistent with a recomputation; stop at EOS; masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training.policy_helpers import make_tiny_policy_dir, sample_group, tiny_config, write_prompts
from training.policy.policy import Policy, action_logprobs, load_policy
from training.policy.prompts import load_prompts_file
from training.policy.rollout import encode_prompt, eos_mask, sample_groups


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    root = tmp_path_factory.mktemp("rollout")
    model_dir = make_tiny_policy_dir(root / "model")
    return load_policy(tiny_config(model_dir, root / "out", write_prompts(root / "p.jsonl")))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list:
    return load_prompts_file(write_prompts(tmp_path_factory.mktemp("prompts") / "p.jsonl"))


def test_eos_mask_keeps_tokens_up_to_and_including_the_first_eos() -> None:
    actions = torch.tensor([[5, 6, 3, 0, 0], [5, 6, 7, 8, 9], [3, 0, 0, 0, 0]])
    mask, finished = eos_mask(actions, [3])
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
        [True, False, False, False, False],
    ]
    assert finished.tolist() == [True, False, True]


def test_trajectory_structure_matches_a_recomputation(policy: Policy, prompts: list) -> None:
    torch.manual_seed(3)
    group = sample_group(policy, prompts[0], k=4, max_new_tokens=10, temperature=0.8)
    k, t_len = group.actions.shape
    assert k == 4 and t_len <= 10
    assert group.logprobs.shape == group.mask.shape == (k, t_len)
    prompt_ids = encode_prompt(policy, prompts[0])
    assert torch.equal(group.prompt_ids, prompt_ids)
    # the sampler's log-probs equal a fresh forward pass over prompt + answer (same policy, same temperature)
    recomputed, _ = action_logprobs(
        policy.model, group.prompt_ids, group.actions, group.mask, temperature=0.8
    )
    assert torch.allclose(recomputed.detach(), group.logprobs, atol=1e-4)
    assert (group.logprobs[group.mask] < 0).all() and (group.logprobs[~group.mask] == 0).all()
    eos = policy.eos_token_ids[0]
    for i in range(k):
        actions, logprobs, n = group.actions[i], group.logprobs[i], int(group.mask[i].sum())
        assert n >= 1
        # state S_t = prompt + first t actions; action A_t is the next token, drawn from pi(.|S_t)
        for t in (0, n - 1):
            state = torch.cat([group.prompt_ids, actions[:t]])
            with torch.no_grad():
                logits = policy.model(input_ids=state.unsqueeze(0)).logits[0, -1] / 0.8
            expected = torch.log_softmax(logits, -1)[actions[t]]
            assert float(expected) == pytest.approx(float(logprobs[t]), abs=1e-4)
        if group.finished[i]:
            assert int(actions[n - 1]) == eos  # EOS is the last action
            assert (actions[n:] == policy.pad_token_id).all()  # padding after EOS
        else:
            assert n == t_len and eos not in actions.tolist()


def test_generation_stops_at_eos(policy: Policy, prompts: list) -> None:
    """Bias the model so EOS is (almost) certain after the first token: answers end early."""
    eos = policy.eos_token_ids[0]
    head = policy.model.get_output_embeddings()
    with torch.no_grad():
        saved = head.weight[eos].clone()
        head.weight[eos] += 50.0 * torch.sign(head.weight[eos])
    try:
        torch.manual_seed(0)
        group = sample_group(policy, prompts[1], k=3, max_new_tokens=12)
    finally:
        with torch.no_grad():
            head.weight[eos] = saved
    assert group.finished.all()
    assert group.lengths.max() < 12


def test_same_seed_same_samples(policy: Policy, prompts: list) -> None:
    torch.manual_seed(7)
    a = sample_group(policy, prompts[2], k=2, max_new_tokens=6)
    torch.manual_seed(7)
    b = sample_group(policy, prompts[2], k=2, max_new_tokens=6)
    assert torch.equal(a.actions, b.actions) and a.texts == b.texts


def test_sampling_threads_are_restored_afterwards(policy: Policy, prompts: list) -> None:
    before = torch.get_num_threads()
    torch.manual_seed(1)
    one_thread = sample_group(policy, prompts[0], k=2, max_new_tokens=4, threads=1)
    assert torch.get_num_threads() == before
    torch.manual_seed(1)
    default = sample_group(policy, prompts[0], k=2, max_new_tokens=4)
    assert torch.equal(one_thread.actions, default.actions)  # threads change speed, not samples


def test_prompts_sampled_together_match_prompts_sampled_alone(policy: Policy, prompts: list) -> None:
    """Left padding is invisible: greedy answers equal the one-prompt answers, and the batch's log-probs
    equal an unpadded forward pass over each group's own prompt."""
    chosen = prompts[:3]
    lengths = {int(encode_prompt(policy, p).shape[0]) for p in chosen}
    assert len(lengths) > 1, "the test needs prompts of different lengths (padding)"
    together = sample_groups(policy, chosen, k=2, max_new_tokens=8, greedy=True)
    for prompt, group in zip(chosen, together, strict=True):
        alone = sample_group(policy, prompt, k=2, max_new_tokens=8, greedy=True)
        assert group.prompt is prompt and torch.equal(group.prompt_ids, encode_prompt(policy, prompt))
        assert group.texts == alone.texts
        assert torch.equal(group.actions[group.mask], alone.actions[alone.mask])
        assert torch.allclose(group.logprobs, alone.logprobs, atol=1e-4)
    torch.manual_seed(5)
    sampled = sample_groups(policy, chosen, k=3, max_new_tokens=8, temperature=0.9)
    for group in sampled:
        assert group.actions.shape[0] == 3 and torch.isfinite(group.logprobs).all()
        assert int(group.mask.sum(dim=1).max()) == group.actions.shape[1]  # no all-padding columns
        recomputed, _ = action_logprobs(
            policy.model, group.prompt_ids, group.actions, group.mask, temperature=0.9
        )
        assert torch.allclose(recomputed.detach(), group.logprobs, atol=1e-4)
    assert sample_groups(policy, [], k=2, max_new_tokens=4) == []


def test_entropy_is_log_vocab_for_a_uniform_policy_and_zero_on_padding(tmp_path: Path) -> None:
    """The entropy the update logs and may reward: a head of zeros gives every token the same logit,
    so each real position has entropy exactly log(V); padding positions count 0."""
    fresh = load_policy(
        tiny_config(
            make_tiny_policy_dir(tmp_path / "model"), tmp_path / "out", write_prompts(tmp_path / "p.jsonl")
        )
    )
    head = fresh.model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()
    actions = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    _, entropy = action_logprobs(fresh.model, torch.tensor([2, 4, 10]), actions, mask, with_entropy=True)
    assert entropy is not None
    vocab = head.weight.shape[0]
    expected = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]) * math.log(vocab)
    assert torch.allclose(entropy, expected, atol=1e-5)
