"""`PolicyConfig`: every knob of policy optimisation, with its recommended value and why.

    config = PolicyConfig(service_urls=["http://localhost:8000"], steps=30, out="runs/pi")

One dataclass (TRL style: each field carries ``help`` metadata) from which `rlhf train-policy` builds
its options, saved next to every checkpoint (``config.json``) and checked when a run resumes. The
fields come in two groups: the learning knobs (what the run learns; a resumed run must keep them) and
the run control (where and how it runs: service, devices, threads, steps, output; marked
``run_control`` and free to change on ``--resume``).

The defaults (plain RLOO, LoRA on every linear layer, 4 prompts x 4 answers, short answers, a
LoRA-sized learning rate, a KL penalty) were chosen by the runs in the README's "Policy optimisation"
section, which has the measured gains. Two things those runs showed shape the defaults: most of the
gain is length (this reward model scores short answers higher), and over long runs the KL penalty
decides whether the policy stays fluent or collapses into one phrase the reward model likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.configuration import Check, ConfigError, DataclassConfig

__all__ = ["BASELINES", "ESTIMATORS", "RESUMABLE_CHANGES", "REWARD_KEYS", "ConfigError", "PolicyConfig"]

ESTIMATORS = ("rloo", "reinforce", "baseline", "group_norm")
BASELINES = ("batch_mean", "moving_average")
REWARD_KEYS = ("normalized", "raw")


def _f(default: Any, help: str) -> Any:
    """A learning knob: a resumed run must keep it."""
    return field(default=default, metadata={"help": help})


def _run(default: Any, help: str) -> Any:
    """A run-control field: where and how the run executes; it may change when the run resumes."""
    return field(default=default, metadata={"help": help, "run_control": True})


@dataclass
class PolicyConfig(DataclassConfig):
    """Policy-gradient training against the scoring service.

    Recommended values are the defaults. ``estimator``: ``rloo`` (leave-one-out baseline over the k
    answers of a prompt; lowest variance without a value network), ``group_norm`` (GRPO-style
    (r - group mean) / group std), ``baseline`` (REINFORCE minus a batch-mean or moving-average
    baseline), ``reinforce`` (``sum_t logprob(A_t|S_t) * R_t`` exactly as written; high variance, kept
    for comparison).
    """

    # ===== learning knobs ============================================================================
    # --- reward
    reward_key: str = _f(
        "normalized",
        "Reward used for the gradient: 'normalized' ((score - mean) / std of the RM's training scores, so "
        "lr and kl_coef carry over between reward models) or 'raw'.",
    )
    max_failed_fraction: float = _f(
        0.25, "Stop when more than this fraction of a step's rewards could not be fetched (masked, never 0)."
    )
    allow_model_change: bool = _f(False, "Keep training when the service starts serving another RM version.")
    uncertainty_penalty: float = _f(
        0.0,
        "lambda of the uncertainty-weighted objective reward - lambda * uncertainty (Coste et al. 2023): "
        "answers the reward model's ensemble disagrees on earn less. In the reward's own units (the "
        "normalised uncertainty with the normalised reward, the raw one with raw); 0 = off. Needs a bundle "
        "that serves a per-item uncertainty (`rlhf train-rm --quality-heads N`, N > 1), else the run stops "
        "at its start. The length-disentangled score needs no option here: serve a bundle trained with "
        "`--length-head` and the service serves its quality head.",
    )
    # --- policy
    model: str | None = _f(None, "Causal LM: local HF dir or hub name; default SmolLM2-135M-Instruct GGUF.")
    gguf_file: str | None = _f(None, "GGUF file inside `model` (set automatically for the default model).")
    full_finetune: bool = _f(
        False, "Train every weight instead of a LoRA adapter (needs a frozen copy for KL)."
    )
    lora_r: int = _f(
        16, "LoRA rank; with adapters on every linear layer it moves the policy within a short CPU run."
    )
    lora_alpha: int = _f(32, "LoRA scaling numerator (effective scale alpha / r).")
    lora_dropout: float = _f(
        0.0, "LoRA dropout; 0 keeps the sampling policy and the trained policy identical."
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules with adapters: 'all-linear' = every linear layer but the LM head (any "
            "architecture); None = peft's default (q_proj, v_proj on Llama). All linear layers move the "
            "policy faster per step than q/v only at the same rank (README 'Policy optimisation')."
        },
    )
    # --- data
    prompts_file: str | None = _f(None, 'JSONL of {"prompt": ...} or {"question": ...}; default: hh-rlhf.')
    reward_run: str | None = _f(None, "Reward-model run dir: its validation split gives the default prompts.")
    eval_prompts: int = _f(
        32,
        "Held-out prompts for the before/after evaluation (never trained on). The gain differs from prompt "
        "to prompt, so the number of prompts, not of samples, sets its standard error.",
    )
    eval_samples: int = _f(2, "Fixed-seed samples per evaluation prompt.")
    max_prompt_tokens: int = _f(
        192,
        "Longer prompts (chat template applied) are skipped and counted; the default keeps most hh questions.",
    )
    # --- sampling
    k: int = _f(4, "Answers per prompt; RLOO and group_norm need at least 2.")
    prompts_per_step: int = _f(4, "Prompts per step; a step trains on prompts_per_step * k answers.")
    max_new_tokens: int = _f(40, "Answer length cap; generation also stops at EOS.")
    temperature: float = _f(1.0, "Sampling temperature; the trained policy is softmax(logits / temperature).")
    top_p: float = _f(1.0, "Nucleus sampling; < 1 makes sampling slightly off-policy (not corrected).")
    # --- objective
    estimator: str = _f("rloo", "Advantage estimator: rloo | group_norm | baseline | reinforce.")
    baseline: str = _f("batch_mean", "For estimator=baseline: batch_mean or moving_average.")
    baseline_momentum: float = _f(0.9, "Moving-average baseline: b <- m * b + (1 - m) * mean reward.")
    gamma: float = _f(1.0, "Discount: R_t = sum_k gamma^k r_{t+k}; 1.0 credits every token with the reward.")
    kl_coef: float = _f(
        0.05,
        "Per-token KL penalty -beta * (logp - logp_ref) added to the rewards; 0 = off. Without enough of it "
        "a long run finds a degenerate answer the reward model likes and the KL climbs without bound; short "
        "runs (the demo's) gain more without it (README 'Policy optimisation').",
    )
    kl_target: float | None = _f(
        None,
        "Adaptive KL: nats per answer to hold the KL to the reference at. kl_coef is then the starting beta, "
        "and each step beta *= 1 + kl_adapt_rate * clip(KL / target - 1, -0.2, 0.2) (Ziegler et al. 2019).",
    )
    kl_adapt_rate: float = _f(
        0.1, "Adaptive KL: how fast beta follows the KL error (beta moves at most 0.2 * rate a step)."
    )
    normalize_advantages: bool = _f(False, "Scale advantages to zero mean, unit std over the step's tokens.")
    entropy_coef: float = _f(0.0, "Entropy bonus weight (entropy is always logged as a metric).")
    ppo_epochs: int = _f(1, "Inner epochs per batch; > 1 uses the PPO clipped ratio against the sampler.")
    clip_eps: float = _f(0.2, "PPO clip range for the ratio pi / pi_old (used when ppo_epochs > 1).")
    # --- optimisation
    lr: float = _f(
        5e-4,
        "AdamW learning rate; 5e-4 for LoRA (lower barely moved the policy in a short run), about 1e-5 for "
        "full fine-tuning.",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping (global L2 norm).")
    seed: int = _f(0, "Seed of sampling, prompt order and the evaluation (the eval uses seed + 1000).")

    # ===== run control: where and how the run executes; may change on --resume =======================
    # --- service
    service_urls: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Scoring-service base URLs; requests are spread over all of them.",
            "run_control": True,
        },
    )
    api_key: str | None = _run(None, "Bearer token of the scoring service (RLHF_API_KEY on the server).")
    request_timeout: float = _run(30.0, "Seconds per scoring request before it is retried.")
    max_retries: int = _run(4, "Retries of a failed scoring chunk (timeouts, 429, 5xx) before it is masked.")
    # --- compute
    device: str = _run("auto", "torch device: auto (a GPU when torch sees one), cpu, cuda, cuda:1, mps.")
    gen_threads: int = _run(
        1,
        "CPU threads while sampling (0 = torch default). Decoding is many tiny ops: a second thread mostly "
        "waits at barriers, and on a busy machine it made generation much slower.",
    )
    train_threads: int = _run(0, "CPU threads for the update's large matmuls (0 = torch default).")
    generation_batch_prompts: int = _run(
        16,
        "Prompts decoded together in one generate call (left-padded). Decoding costs one forward pass per "
        "token almost whatever the batch, so prompts decoded together share it (README 'Policy "
        "optimisation'). A step's prompts are scored chunk by chunk while the next chunk is generated. Bounded "
        "because the logits kept for the log-probs grow with prompts x k x max_new_tokens x vocabulary.",
    )
    # --- length, evaluation and output
    steps: int = _run(50, "Policy-gradient steps.")
    eval_greedy: bool = _run(
        False,
        "Also evaluate one greedy answer per held-out prompt (no sampling noise; costs about as much as "
        "the sampled pass, whose prompt prefill dominates).",
    )
    skip_eval: bool = _run(False, "Skip the before/after evaluation.")
    gold_bundle: str | None = _run(
        None,
        "Gold reward (Gao et al. 2022): a reward bundle the policy never optimised against, scored in this "
        "process with the service's own loading and encoding code, on every step's answers (gold_mean, in "
        "the gold's own score std) and in the before/after evaluation. Over-optimisation shows as the "
        "proxy rising while the gold stays flat or falls. Pick a gold that differs from the proxy where "
        "hacking happens (length-corrected, another base or data); its own score-length correlation is "
        "reported beside its gain. A resumed run must keep the same gold.",
    )
    gold_threads: int = _run(1, "onnxruntime threads of the in-process gold scoring (0 = one per core).")
    out: str = _run("runs/pi", "Run directory: metrics.jsonl, plots, checkpoint/, adapter/, merged/.")
    checkpoint_every: int = _run(10, "Steps between checkpoints (the last step is always saved).")
    resume: bool = _run(
        False, "Continue from out/checkpoint (the learning knobs must match; run-control options may change)."
    )
    merge: bool = _run(False, "Also save the adapter merged into the base weights (out/merged).")

    def checks(self) -> list[Check]:
        return [
            ("estimator", self.estimator in ESTIMATORS, f"must be one of {', '.join(ESTIMATORS)}"),
            ("baseline", self.baseline in BASELINES, f"must be one of {', '.join(BASELINES)}"),
            ("reward_key", self.reward_key in REWARD_KEYS, f"must be one of {', '.join(REWARD_KEYS)}"),
            ("k", self.k >= 1, "must be >= 1"),
            (
                "k",
                self.k >= 2 or self.estimator not in ("rloo", "group_norm"),
                f"estimator {self.estimator} compares the k answers to a prompt: needs k >= 2",
            ),
            ("prompts_per_step", self.prompts_per_step >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("generation_batch_prompts", self.generation_batch_prompts >= 1, "must be >= 1"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            (
                "kl_target",
                self.kl_target is None or (self.kl_target > 0 and self.kl_coef > 0),
                f"kl_target needs a positive target and kl_coef > 0 (the starting beta), got kl_coef={self.kl_coef}",
            ),
            ("kl_adapt_rate", 0 < self.kl_adapt_rate <= 1, "must be in (0, 1]"),
            ("ppo_epochs", self.ppo_epochs >= 1, "must be >= 1"),
            ("clip_eps", 0 < self.clip_eps < 1, "must be in (0, 1)"),
            ("steps", self.steps >= 0, "must be >= 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("max_failed_fraction", 0 <= self.max_failed_fraction <= 1, "must be in [0, 1]"),
            ("baseline_momentum", 0 <= self.baseline_momentum < 1, "must be in [0, 1)"),
            ("lora_r", self.lora_r >= 1, "must be >= 1"),
            ("eval_prompts", self.eval_prompts >= 0, "must be >= 0"),
            ("eval_samples", self.eval_samples >= 1, "must be >= 1"),
            ("gen_threads", self.gen_threads >= 0, "must be >= 0 (0 = torch default)"),
            ("train_threads", self.train_threads >= 0, "must be >= 0 (0 = torch default)"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1"),
            ("uncertainty_penalty", self.uncertainty_penalty >= 0, "must be >= 0"),
            ("gold_threads", self.gold_threads >= 0, "must be >= 0 (0 = one per core)"),
        ]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("api_key")  # a secret never goes into a run directory
        return data


# Fields that may differ between a checkpoint and the run that resumes it: the run-control group.
RESUMABLE_CHANGES = PolicyConfig.run_control_fields()
