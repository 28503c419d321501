"""`PolicyConfig`: every knob of policy optimisation, with its recommended value and why.

One dataclass (TRL style: each field carries ``help`` metadata) that the CLI exposes flag by flag,
that is saved next to every checkpoint (``config.json``) and that a resumed run is checked against.
The defaults are the measured demo run (which turns the KL penalty off for its 20 steps): plain RLOO,
LoRA r 16 on every linear layer, 4 prompts x 4 answers, 40 new tokens, lr 5e-4. Against
bundles/rm-default (held-out gain in the RM's score std, +- standard error): +0.55 +- 0.11 after 20
steps on the 32 default eval prompts (answers 35 -> 16 tokens, KL 5.6 nats per answer); in a run
holding out 48 prompts +0.61 +- 0.09 after 10 steps, +0.77 after 20, +0.95 after 30 (answers 37 -> 19
-> 8 -> 5 tokens, KL 9 -> 13 -> 16). The earlier lr 2e-4 with adapters on q/v only gained about 0.1
std in 24-30 steps (KL ~1: the policy had hardly moved).
Most of the gain is length: this RM scores short answers higher ("I'm sorry.", "I don't know.").
Over 100 steps the KL penalty decides: kl_coef 0.05 (the default) held KL at ~10 nats from step 20 on
and gained +0.98 +- 0.09 std; 0.035 gained +1.07 +- 0.10 with KL 10-14 until step 90, then 17-19;
0.02 gained +1.21 but KL climbed to 30-39 and the policy collapsed into "I'm sorry I'm sorry ..."
(entropy 0.02); an adaptive target of 10 nats gained +0.77 (run-to-run noise is ~0.2 std).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ESTIMATORS = ("rloo", "reinforce", "baseline", "group_norm")
BASELINES = ("batch_mean", "moving_average")
REWARD_KEYS = ("normalized", "raw")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class PolicyConfig:
    """Policy-gradient training against the scoring service.

    Recommended values are the defaults. ``estimator``: ``rloo`` (leave-one-out baseline over the k
    answers of a prompt; lowest variance without a value network), ``group_norm`` (GRPO-style
    (r - group mean) / group std), ``baseline`` (REINFORCE minus a batch-mean or moving-average
    baseline), ``reinforce`` (``sum_t logprob(A_t|S_t) * R_t`` exactly as written; high variance, kept
    for comparison).
    """

    # --- service
    service_urls: list[str] = field(
        default_factory=list,
        metadata={"help": "Scoring-service base URLs; requests are spread over all of them."},
    )
    api_key: str | None = _f(None, "Bearer token of the scoring service (RLHF_API_KEY on the server).")
    request_timeout: float = _f(30.0, "Seconds per scoring request before it is retried.")
    max_retries: int = _f(4, "Retries of a failed scoring chunk (timeouts, 429, 5xx) before it is masked.")
    reward_key: str = _f(
        "normalized",
        "Reward used for the gradient: 'normalized' ((score - mean) / std of the RM's training scores, so "
        "lr and kl_coef carry over between reward models) or 'raw'.",
    )
    max_failed_fraction: float = _f(
        0.25, "Stop when more than this fraction of a step's rewards could not be fetched (masked, never 0)."
    )
    allow_model_change: bool = _f(False, "Keep training when the service starts serving another RM version.")
    # --- policy
    model: str | None = _f(None, "Causal LM: local HF dir or hub name; default SmolLM2-135M-Instruct GGUF.")
    gguf_file: str | None = _f(None, "GGUF file inside `model` (set automatically for the default model).")
    device: str = _f("auto", "torch device: auto (a GPU when torch sees one), cpu, cuda, cuda:1, mps.")
    gen_threads: int = _f(
        1,
        "CPU threads while sampling (0 = torch default). Decoding is many tiny ops: a 2nd thread mostly "
        "waits at barriers, and on a busy machine made generation 10x slower (measured 14 s vs 140 s).",
    )
    train_threads: int = _f(0, "CPU threads for the update's large matmuls (0 = torch default).")
    full_finetune: bool = _f(
        False, "Train every weight instead of a LoRA adapter (needs a frozen copy for KL)."
    )
    lora_r: int = _f(16, "LoRA rank (16 with all linear layers: +0.6 std in 10 steps).")
    lora_alpha: int = _f(32, "LoRA scaling numerator (effective scale alpha / r = 2).")
    lora_dropout: float = _f(
        0.0, "LoRA dropout; 0 keeps the sampling policy and the trained policy identical."
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules with adapters: 'all-linear' = every linear layer but the LM head (any "
            "architecture); None = peft's default (q_proj, v_proj on Llama). All linear layers moved the "
            "policy several times faster per step than q/v only at the same rank (measured on SmolLM2)."
        },
    )
    # --- data
    prompts_file: str | None = _f(None, 'JSONL of {"prompt": ...} or {"question": ...}; default: hh-rlhf.')
    reward_run: str | None = _f(None, "Reward-model run dir: its validation split gives the default prompts.")
    eval_prompts: int = _f(
        32,
        "Held-out prompts for the before/after evaluation (never trained on). The gain differs from prompt "
        "to prompt (spread ~0.6 RM std), so prompts, not samples, set its standard error: ~0.1 std at 32.",
    )
    eval_samples: int = _f(2, "Fixed-seed samples per evaluation prompt.")
    eval_greedy: bool = _f(
        False,
        "Also evaluate one greedy answer per held-out prompt (no sampling noise; costs about as much as "
        "the sampled pass, whose prompt prefill dominates).",
    )
    max_prompt_tokens: int = _f(
        192, "Longer prompts (chat template applied) are skipped and counted; 192 keeps most hh questions."
    )
    # --- sampling
    k: int = _f(4, "Answers per prompt; RLOO and group_norm need at least 2.")
    prompts_per_step: int = _f(4, "Prompts per step; a step trains on prompts_per_step * k answers.")
    max_new_tokens: int = _f(40, "Answer length cap; generation also stops at EOS.")
    generation_batch_prompts: int = _f(
        16,
        "Prompts decoded together in one generate call (left-padded). Decoding costs one forward pass per "
        "token almost whatever the batch: 4 prompts x 4 answers together took half the time of one prompt "
        "after the other, 16 x 2 a third (SmolLM2, 2 CPU cores). A step's prompts are scored chunk by "
        "chunk while the next chunk is generated. Bounded because the logits kept for the log-probs grow "
        "with prompts x k x max_new_tokens x vocabulary (16 x 2 x 40 x 49k floats = 250 MB).",
    )
    temperature: float = _f(1.0, "Sampling temperature; the trained policy is softmax(logits / temperature).")
    top_p: float = _f(1.0, "Nucleus sampling; < 1 makes sampling slightly off-policy (not corrected).")
    # --- objective
    estimator: str = _f("rloo", "Advantage estimator: rloo | group_norm | baseline | reinforce.")
    baseline: str = _f("batch_mean", "For estimator=baseline: batch_mean or moving_average.")
    baseline_momentum: float = _f(0.9, "Moving-average baseline: b <- m * b + (1 - m) * mean reward.")
    gamma: float = _f(1.0, "Discount: R_t = sum_k gamma^k r_{t+k}; 1.0 credits every token with the reward.")
    kl_coef: float = _f(
        0.05,
        "Per-token KL penalty -beta * (logp - logp_ref) added to the rewards; 0 = off. Over 100 steps 0.05 "
        "held the KL at ~10 nats per answer (+0.98 RM std held out), 0.035 gained +1.07 but the KL began "
        "to climb after step 90, and 0.02 let it climb to 30-39: the policy collapsed into one repeated "
        "phrase (entropy 0.02). Short runs (the demo's 20 steps) gain more without it.",
    )
    kl_target: float | None = _f(
        None,
        "Adaptive KL: nats per answer to hold the KL to the reference at. kl_coef is then the starting beta, "
        "and each step beta *= 1 + kl_adapt_rate * clip(KL / target - 1, -0.2, 0.2) (Ziegler et al. 2019).",
    )
    kl_adapt_rate: float = _f(
        0.1, "Adaptive KL: how fast beta follows the KL error (0.1: at most 2% a step)."
    )
    normalize_advantages: bool = _f(False, "Scale advantages to zero mean, unit std over the step's tokens.")
    entropy_coef: float = _f(0.0, "Entropy bonus weight (entropy is always logged as a metric).")
    ppo_epochs: int = _f(1, "Inner epochs per batch; > 1 uses the PPO clipped ratio against the sampler.")
    clip_eps: float = _f(0.2, "PPO clip range for the ratio pi / pi_old (used when ppo_epochs > 1).")
    # --- optimisation
    steps: int = _f(50, "Policy-gradient steps.")
    lr: float = _f(
        5e-4,
        "AdamW learning rate; 5e-4 for LoRA (2e-4 barely moved the policy in 30 steps), ~1e-5 for full "
        "fine-tuning.",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping (global L2 norm).")
    seed: int = _f(0, "Seed of sampling, prompt order and the evaluation (the eval uses seed + 1000).")
    # --- output
    out: str = _f("runs/pi", "Run directory: metrics.jsonl, plots, checkpoint/, adapter/, merged/.")
    checkpoint_every: int = _f(10, "Steps between checkpoints (the last step is always saved).")
    resume: bool = _f(False, "Continue from out/checkpoint (same config required, except steps).")
    merge: bool = _f(False, "Also save the adapter merged into the base weights (out/merged).")
    skip_eval: bool = _f(False, "Skip the before/after evaluation.")

    def __post_init__(self) -> None:
        checks = [
            (self.estimator in ESTIMATORS, f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}"),
            (self.baseline in BASELINES, f"baseline must be one of {BASELINES}, got {self.baseline!r}"),
            (
                self.reward_key in REWARD_KEYS,
                f"reward_key must be one of {REWARD_KEYS}, got {self.reward_key!r}",
            ),
            (self.k >= 1, f"k must be >= 1, got {self.k}"),
            (
                self.k >= 2 or self.estimator not in ("rloo", "group_norm"),
                f"estimator {self.estimator} compares the k answers to a prompt: needs k >= 2, got {self.k}",
            ),
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (
                self.generation_batch_prompts >= 1,
                f"generation_batch_prompts must be >= 1, got {self.generation_batch_prompts}",
            ),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.gamma <= 1, f"gamma must be in [0, 1], got {self.gamma}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (
                self.kl_target is None or (self.kl_target > 0 and self.kl_coef > 0),
                "kl_target needs a positive target and kl_coef > 0 (the starting beta), got "
                f"kl_target={self.kl_target}, kl_coef={self.kl_coef}",
            ),
            (0 < self.kl_adapt_rate <= 1, f"kl_adapt_rate must be in (0, 1], got {self.kl_adapt_rate}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (0 < self.clip_eps < 1, f"clip_eps must be in (0, 1), got {self.clip_eps}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.max_failed_fraction <= 1, "max_failed_fraction must be in [0, 1]"),
            (0 <= self.baseline_momentum < 1, "baseline_momentum must be in [0, 1)"),
            (self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}"),
            (self.eval_prompts >= 0 and self.eval_samples >= 1, "eval_prompts >= 0 and eval_samples >= 1"),
            (self.gen_threads >= 0 and self.train_threads >= 0, "thread counts must be >= 0"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("api_key")  # a secret never goes into a run directory
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


# Fields that may differ between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "resume",
        "service_urls",
        "api_key",
        "request_timeout",
        "max_retries",
        "merge",
        "skip_eval",
        "eval_greedy",
        "device",
        "checkpoint_every",
        "gen_threads",
        "train_threads",
        "generation_batch_prompts",
    }
)
