"""The RL loop: sample k answers per prompt, get rewards from the service, policy-gradient step.

    rlhf train-policy --service http://localhost:8000 --steps 30 --out runs/pi

Per step: generate the prompts' groups in a worker thread (a chunk of prompts decoded together) while
the previous chunk is being scored (asyncio; the HTTP client never waits on the GPU/CPU and vice
versa), check the failed share and the RM version, score the answers with the gold reward when there
is one (in-process, `gold.py`), update the policy, log one JSONL record (optimised reward, proxy and
gold in std units, uncertainty, KL, entropy, length, time split into generation / scoring / update
and the scoring share of the step). Before and after: a fixed-seed evaluation on held-out prompts,
scored by the proxy and the gold. Checkpoints allow --resume; the adapter (and optionally a merged
model) is saved at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from service.client import AsyncRewardClient
from training.policy import estimators
from training.policy.checkpoint import TrainState, load_checkpoint, save_checkpoint
from training.policy.config import PolicyConfig
from training.policy.errors import CheckpointError, RewardModelChanged
from training.policy.evaluate import EvalResult, evaluate
from training.policy.gold import GoldScorer, gold_scores
from training.policy.kl_control import adapted_kl_coef
from training.policy.plots import plot_policy_curves
from training.policy.policy import Policy, load_policy, torch_threads
from training.policy.prompts import Prompt, PromptSets, build_prompt_sets, load_prompts
from training.policy.rollout import Group, encode_prompt, sample_groups
from training.policy.scoring import (
    RewardModelInfo,
    RewardScorer,
    Scores,
    check_failures,
    check_uncertainty_served,
    check_version,
    merge_scores,
    score_answers,
)
from training.policy.summary import gains
from training.policy.update import UpdateStats, policy_update
from training.runlog import JsonlLogger, read_jsonl

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Collected:
    groups: list[Group]
    scores: Scores
    gen_seconds: float
    score_wait_seconds: float  # time spent waiting for scores after the last group was generated
    gold: np.ndarray | None = None  # float64 [n]: the gold's raw scores of the same answers
    gold_seconds: float = 0.0


def load_prompt_sets(config: PolicyConfig, policy: Policy) -> PromptSets:
    """Prompts file, or the held-out hh questions; filtered by length, split into train / eval."""
    return build_prompt_sets(
        load_prompts(config.prompts_file, config.reward_run),
        lambda p: int(encode_prompt(policy, p).shape[0]),
        config.max_prompt_tokens,
        config.eval_prompts,
        config.seed,
    )


def step_prompts(prompts: Sequence[Prompt], step: int, per_step: int, seed: int) -> list[Prompt]:
    """Prompts of step ``step`` (1-based): epochs of seeded permutations, so resume needs no state."""
    picked = []
    for i in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(i, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        picked.append(prompts[order[pos]])
    return picked


async def collect(
    policy: Policy,
    client: RewardScorer,
    prompts: Sequence[Prompt],
    config: PolicyConfig,
    score_std: float = 1.0,
) -> Collected:
    """Generate the next chunk of prompts (worker thread) while the previous chunk is scored (event loop).

    A chunk is ``generation_batch_prompts`` prompts decoded together; with the defaults a step's
    prompts are one chunk, so scoring waits for the end of generation: decoding together saves far
    more than the overlap did (README, "Policy optimisation": "Prompts decoded together").
    """
    groups: list[Group] = []
    tasks: list[asyncio.Task[Scores]] = []
    gen_seconds = 0.0
    size = config.generation_batch_prompts
    for start in range(0, len(prompts), size):
        t0 = time.perf_counter()
        chunk = await asyncio.to_thread(
            sample_groups, policy, prompts[start : start + size], config.k, config.max_new_tokens,
            config.temperature, config.top_p, False, config.gen_threads,
        )  # fmt: skip
        gen_seconds += time.perf_counter() - t0
        groups.extend(chunk)
        for g in chunk:
            scored = score_answers(
                client, g.prompt, g.texts, config.reward_key, config.uncertainty_penalty, score_std
            )
            tasks.append(asyncio.create_task(scored))
    t0 = time.perf_counter()
    parts = await asyncio.gather(*tasks)
    return Collected(groups, merge_scores(parts), gen_seconds, time.perf_counter() - t0)


def _with_threads(threads: int, fn: Callable[..., T], *args: Any) -> T:
    """Call fn with `threads` torch CPU threads, set in the calling (worker) thread itself."""
    with torch_threads(threads):
        return fn(*args)


def train(
    config: PolicyConfig, policy: Policy | None = None, client: RewardScorer | None = None
) -> dict[str, Any]:
    """Run the whole job (blocking); returns the summary also written to ``out/summary.json``."""
    return asyncio.run(train_async(config, policy, client))


async def train_async(
    config: PolicyConfig, policy: Policy | None = None, client: RewardScorer | None = None
) -> dict[str, Any]:
    """The job inside a running event loop; a client passed in is used as is and not closed."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    own_client: AsyncRewardClient | None = None
    if client is None:
        client = own_client = AsyncRewardClient(
            config.service_urls,
            api_key=config.api_key,
            timeout=config.request_timeout,
            max_retries=config.max_retries,
        )
    try:
        # ask the service first: an unreachable service fails in seconds, not after loading the model
        info = RewardModelInfo.from_models_response(await client.models())
        log.info("reward model %s version %s (score std %.3f)", info.name, info.version, info.score_std)
        await check_uncertainty_served(client, config.uncertainty_penalty)
        gold = None
        if config.gold_bundle:
            gold = await asyncio.to_thread(GoldScorer.load, config.gold_bundle, config.gold_threads)
            log.info("gold reward model %s version %s (in-process)", gold.model.name, gold.model.version)
        if policy is None:
            policy = load_policy(config)
        sets = load_prompt_sets(config, policy)
        log.info(
            "prompts: %d for training, %d held out for evaluation, %d skipped (> %d tokens)",
            len(sets.train), len(sets.eval), sets.skipped_too_long, config.max_prompt_tokens,
        )  # fmt: skip
        return await _run(Job(config, policy, client, info, sets, out, gold))
    finally:
        if own_client is not None:
            await own_client.aclose()


@dataclass
class Job:
    """What every part of a run reads: its settings, the policy, the reward service, the prompts."""

    config: PolicyConfig
    policy: Policy
    client: RewardScorer
    info: RewardModelInfo  # the reward model the service served when the run started
    sets: PromptSets
    out: Path
    gold: GoldScorer | None = None  # the gold reward, scored in-process; never optimised against


async def _run(job: Job) -> dict[str, Any]:
    """Evaluate, train ``config.steps`` steps (checkpointing), evaluate again, save and summarise."""
    config, policy = job.config, job.policy
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    state = _start_state(job, optimizer)
    config.save(job.out / "config.json")
    logger = JsonlLogger(job.out / "metrics.jsonl", keep_until_step=state.step if config.resume else None)

    before, before_greedy = await _evaluate(job, "before"), await _evaluate(job, "before", greedy=True)
    progress = tqdm(
        range(state.step + 1, config.steps + 1),
        desc="policy",
        unit="step",
        initial=state.step,
        total=config.steps,
    )
    for step in progress:
        record = await _train_step(job, step, optimizer, state)
        logger.log(record)
        progress.set_postfix(reward=f"{record['reward_mean'] or float('nan'):.3f}", kl=f"{record['kl']:.3f}")
        state.step = step
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(job.out / "checkpoint", policy, optimizer, state, config)
    progress.close()
    after, after_greedy = await _evaluate(job, "after"), await _evaluate(job, "after", greedy=True)
    greedy = (before_greedy, after_greedy) if before_greedy and after_greedy else None
    return _finish(job, before, after, greedy)


def _start_state(job: Job, optimizer: torch.optim.Optimizer) -> TrainState:
    """A fresh state, or the checkpoint's (weights and optimizer restored in place) on --resume."""
    config, info = job.config, job.info
    gold = job.gold.model.bundle.sha256 if job.gold else None
    if not config.resume:
        return TrainState(0, None, info.name, info.version, config.kl_coef, gold)
    state = load_checkpoint(job.out / "checkpoint", job.policy, optimizer, config)
    if state.gold_sha256 != gold:
        raise CheckpointError(
            f"the checkpoint was measured against gold bundle {state.gold_sha256 or 'none'}, this run "
            f"against {gold or 'none'} (manifest sha256); gold numbers before and after would not "
            "compare: resume with the same --gold-bundle"
        )
    if state.rm_version != info.version and not config.allow_model_change:
        raise RewardModelChanged(
            f"the checkpoint was trained against RM version {state.rm_version}, the service now serves "
            f"{info.version}; pass --allow-model-change to continue anyway"
        )
    state.rm_version = info.version
    return state


async def _evaluate(job: Job, name: str, greedy: bool = False) -> EvalResult | None:
    """The held-out evaluation named ``name`` (None when switched off); a resumed run reuses "before"."""
    config = job.config
    if config.skip_eval or not job.sets.eval or (greedy and not config.eval_greedy):
        return None
    name = f"{name}_greedy" if greedy else name
    cached = job.out / f"eval_{name}.json"
    if name.startswith("before") and config.resume and cached.is_file():
        return EvalResult.from_dict(json.loads(cached.read_text(encoding="utf-8")))
    result = await evaluate(
        job.policy, job.client, job.sets.eval, config.eval_samples, config.max_new_tokens, config.temperature,
        config.top_p, config.seed, job.info.score_mean, job.info.score_std,
        job.out / f"eval_{name}_samples.jsonl",
        threads=config.gen_threads, greedy=greedy, batch_prompts=config.generation_batch_prompts,
        gold=job.gold,
    )  # fmt: skip
    cached.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return result


async def _train_step(
    job: Job, step: int, optimizer: torch.optim.Optimizer, state: TrainState
) -> dict[str, Any]:
    """One policy-gradient step; updates ``state`` and returns the step's metrics record."""
    config, policy = job.config, job.policy
    t_step = time.perf_counter()
    # 1. sample groups, scoring each while the next one is generated
    prompts = step_prompts(job.sets.train, step, config.prompts_per_step, config.seed)
    collected = await collect(policy, job.client, prompts, config, job.info.score_std)
    scores = collected.scores
    # 2. stop rules: too many failed rewards, a different reward model
    check_failures(scores, config.max_failed_fraction, step)
    state.rm_version = check_version(state.rm_version, scores, config.allow_model_change, step)
    if job.gold is not None:  # the gold's view of the same answers (in-process, off the event loop)
        t0 = time.perf_counter()
        collected.gold = np.concatenate(await asyncio.to_thread(gold_scores, job.gold, collected.groups))
        collected.gold_seconds = time.perf_counter() - t0
    # 3. policy-gradient update (failed rewards are NaN and get masked inside)
    seq_rewards = torch.tensor(scores.rewards, dtype=torch.float32)  # [B]
    if config.estimator == "baseline":
        state.baseline_value = estimators.constant_baseline(
            config.baseline, state.baseline_value, seq_rewards, config.baseline_momentum
        )
    kl_coef = state.kl_coef
    t0 = time.perf_counter()
    stats = await asyncio.to_thread(
        _with_threads, config.train_threads, policy_update,
        policy, optimizer, collected.groups, seq_rewards, config, state.baseline_value, kl_coef,
    )  # fmt: skip
    update_seconds = time.perf_counter() - t0
    step_seconds = time.perf_counter() - t_step
    # 4. the adaptive KL controller sets the next step's beta from this step's KL
    if config.kl_target is not None:
        state.kl_coef = adapted_kl_coef(kl_coef, stats.kl, config.kl_target, config.kl_adapt_rate)
    return _step_record(step, collected, stats, state, kl_coef, update_seconds, step_seconds, job.gold)


def _step_record(
    step: int,
    collected: Collected,
    stats: UpdateStats,
    state: TrainState,
    kl_coef: float,
    update_seconds: float,
    step_seconds: float,
    gold: GoldScorer | None = None,
) -> dict[str, Any]:
    """One metrics.jsonl line: rewards, KL, entropy, answer length, and where the step's time went.

    ``reward_mean`` is what the gradient saw (with a penalty: score - lambda * uncertainty);
    ``proxy_mean`` the served score and ``gold_mean`` the gold's, each in its own RM's std."""
    scores = collected.scores
    ok = np.isfinite(scores.rewards)
    lengths = torch.cat([g.lengths for g in collected.groups]).float()
    gold_raw = collected.gold if gold is not None and collected.gold is not None else np.zeros(0)
    return {
        "step": step,
        "reward_mean": _mean(scores.rewards[ok]),
        "reward_std": float(scores.rewards[ok].std()) if ok.any() else None,
        "raw_reward_mean": _mean(scores.raw[ok]),
        "proxy_mean": _mean(scores.normalized[ok]),
        "uncertainty_mean": _mean(scores.uncertainty[ok]),
        "gold_mean": _mean(gold.normalize(gold_raw)) if gold is not None else None,
        "gold_raw_mean": _mean(gold_raw) if gold is not None else None,
        "kl": stats.kl,
        "kl_per_token": stats.kl_per_token,
        "kl_coef": kl_coef,
        "entropy": stats.entropy,
        "answer_length": float(lengths.mean()),
        "eos_fraction": float(torch.cat([g.finished for g in collected.groups]).float().mean()),
        "failed_rewards": scores.failed,
        "usable_answers": stats.usable,
        "loss": stats.loss,
        "grad_norm": stats.grad_norm,
        "clip_fraction": stats.clip_fraction,
        "adv_std": stats.adv_std,
        "baseline": state.baseline_value,
        "gen_seconds": collected.gen_seconds,
        "score_seconds": scores.seconds,
        "score_wait_seconds": collected.score_wait_seconds,
        "update_seconds": update_seconds,
        "gold_seconds": collected.gold_seconds,
        "step_seconds": step_seconds,
        # request wall time (partly hidden behind generation) over the step: an upper bound
        "scoring_share": scores.seconds / step_seconds,
        "rm_version": state.rm_version,
    }


def _mean(values: np.ndarray) -> float | None:
    """Mean of the finite values; None (JSON null) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _finish(
    job: Job,
    before: EvalResult | None,
    after: EvalResult | None,
    greedy: tuple[EvalResult, EvalResult] | None = None,
) -> dict[str, Any]:
    """Plot, save the adapter (and the merged model), write and return OUT/summary.json."""
    config, policy, out, info, sets = job.config, job.policy, job.out, job.info, job.sets
    records = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    plot = None
    if records:
        plot = plot_policy_curves(records, out / "curves.png", f"policy vs {info.name} {info.version}")
    saved = out / ("adapter" if policy.is_lora else "model")
    policy.model.save_pretrained(saved)
    policy.tokenizer.save_pretrained(saved)
    merged = None
    if config.merge and policy.is_lora:
        merged = out / "merged"
        model = policy.model.merge_and_unload()  # type: ignore[operator]
        model.save_pretrained(merged)
        policy.tokenizer.save_pretrained(merged)
    summary: dict[str, Any] = {
        "reward_model": {"name": info.name, "version": info.version, "score_std": info.score_std},
        "steps": len(records),
        "prompts": {
            "train": len(sets.train),
            "eval": len(sets.eval),
            "skipped_too_long": sets.skipped_too_long,
        },
        "before": before.to_dict() if before else None,
        "after": after.to_dict() if after else None,
        "saved": str(saved),
        "merged": str(merged) if merged else None,
        "plot": str(plot) if plot else None,
    }
    if job.gold is not None:
        summary["gold_model"] = job.gold.describe()
    if before and after:
        gold_std = job.gold.score_std if job.gold is not None else None
        summary |= gains(before, after, info.score_std, gold_std)
    if greedy:
        summary["before_greedy"], summary["after_greedy"] = greedy[0].to_dict(), greedy[1].to_dict()
        greedy_gains = gains(*greedy, info.score_std)
        summary["greedy_gain_in_std"] = greedy_gains["gain_in_std"]
        summary["greedy_gain_se_in_std"] = greedy_gains["gain_se_in_std"]
    if records:
        tail = records[-min(5, len(records)) :]
        summary["kl_last"] = records[-1].get("kl")
        summary["scoring_share_mean"] = float(np.mean([r["scoring_share"] for r in records]))
        summary["step_seconds_mean"] = float(np.mean([r["step_seconds"] for r in tail]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
