"""Train a reward model (scalar heads on a transformer) on preference pairs.

    rlhf train-rm --out runs/rm                           # embedded hh-rlhf pairs, MiniLM-L6
    rlhf train-rm --out runs/rm --length-head --quality-heads 5  # ODIN length head + 5-head ensemble
    rlhf train-rm --out runs/rm --resume                  # continue after a crash or kill
    rlhf train-rm --out runs/rm-smol --base-model smollm2 --lora-r 16  # the policy's family, chat, LoRA
    torchrun --nproc_per_node 4 -m cli.main train-rm --out runs/rm --device cuda  # several GPUs
    accelerate launch --multi_gpu --num_processes 4 -m cli.main train-rm --out runs/rm  # the same

How long the default run takes on 2 CPU cores: README, "Reward model training".

One readable loop in the nanoGPT manner: set-up, then `for step in ...`. Under torchrun /
accelerate launch every process trains on its own share of the batches (DDP averages gradients);
only rank 0 writes files, logs and shows progress.

Output (read by `rlhf export` and `rlhf eval`)::

    OUT/metrics.jsonl, OUT/curves.png      per-step and validation metrics, their curves
    OUT/checkpoint/                        the latest checkpoint (see checkpoint.py)
    OUT/tokenizer/                         the tokenizer files the run encodes with (encoders.py)
    OUT/final/                             model (safetensors; a LoRA run's merged), reward_config.json
                                           (with the input format it resolved), OUT/tokenizer's
                                           files (tokenizer.json; tokenizer_config.json and
                                           chat_template.jinja when the base has them),
                                           score_stats.json {mean, std, pairs}, metrics.json

Input format (`training.reward.encoders`): ``pair`` reads question and answer through the tokenizer's
pair template (a decoder's, which adds nothing, gets an end-of-text token after the answer); ``chat``
renders them as a conversation with the base's chat template (the default for a base that has one).
Both encode with the service's own encoder classes.

Reproducibility: the split, the batch order of every epoch and the dropout masks of every step are
pure functions of (seed, epoch, step, rank), and the LR is a pure function of the step, so a resumed
run replays exactly what the uninterrupted run would have done: same seed -> same final weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import PreTrainedModel

from service.encoding import EncodedPair, Encoder
from training.reward.bases import resolve_base_model
from training.reward.batching import collate, encode_pairs, length_grouped_batches, pair_lengths
from training.reward.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.reward.config import RewardConfig
from training.reward.data import LoadReport, PreferencePair, load_pairs, split_pairs
from training.reward.distributed import DistEnv, setup_distributed
from training.reward.encoders import (
    model_encoder,
    prepare_run_tokenizer,
    resolve_input_format,
    tokenizer_dir,
    tokenizer_files,
)
from training.reward.heads import HeadLayout, bootstrap_weights
from training.reward.length_balance import LengthBalance, length_balance_weights
from training.reward.lora import add_reward_lora, merged, resume_reward_lora
from training.reward.losses import multi_head_loss
from training.reward.model import (
    accepted_input_names,
    head_weight,
    load_reward_model,
    model_inputs,
)
from training.reward.outputs import describe_validation, plot_run, score_stats, validate, write_final
from training.reward.pooling import reward_logits
from training.runlog import JsonlLogger

RUN_TOKENIZER_DIR = "tokenizer"  # OUT/tokenizer: the tokenizer files the run encodes with and ships


@dataclass
class TrainResult:
    out_dir: Path
    final_dir: Path
    steps: int
    val_metrics: dict[str, float]
    wall_time_s: float  # everything: loading, encoding, training, validation, saving
    loop_time_s: float  # the optimizer steps only (what the TRL benchmark compares)
    loop_cpu_s: float  # CPU seconds of this process in those steps (robust on a shared machine)


def lr_at(step: int, total_steps: int, config: RewardConfig) -> float:
    """Linear warm-up to config.lr, then cosine/linear decay to min_lr_ratio * lr (or constant)."""
    warmup = int(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.decay == "constant":
        return config.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.decay == "cosine" else 1.0 - progress
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape)


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout probability to 0 (TRL's default for reward models); attention reads the same ``p``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def step_seed(seed: int, step: int, rank: int) -> int:
    """A well-mixed 63-bit seed per (run seed, step, rank): dropout masks without saved RNG state."""
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class EncodedData:
    """The run's pairs, split and encoded once with the serving encoder."""

    report: LoadReport  # where the pairs came from, and what was skipped
    train_pairs: list[PreferencePair]
    val_pairs: list[PreferencePair]
    base_dir: str  # the base model to load: config.base_model, a named base resolved to its directory
    tokenizer_files: list[Path]  # OUT/tokenizer's tokenizer.json (+ config, chat template): into OUT/final
    encoder: Encoder  # pair or chat (config.input_format), as the bundle will encode
    chosen: list[EncodedPair]  # index-aligned with train_pairs
    rejected: list[EncodedPair]
    lengths: list[int]  # padded width each training pair needs (batching.pair_lengths)
    per_epoch: int  # batches per process per epoch
    pair_weights: np.ndarray  # [n_pairs, quality_heads] bootstrap x length-balance weight per head
    length_balance: LengthBalance | None = None  # what --length-balance-bins did (None: off)


@dataclass
class StepResult:
    """One optimizer step, as logged."""

    epoch: int
    sums: dict[str, float]  # loss, accuracy, margin (+ head terms): means over the step's micro-batches
    grad_norm: float
    tokens: int  # real (unpadded) tokens this process fed the model


def train(
    config: RewardConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run (or resume) training; ``on_step(step)`` is called after each optimizer step (tests use it)."""
    t_start = time.time()
    out = Path(out_dir)
    env = setup_distributed(config.device)
    ckpt = load_checkpoint(out) if resume else None
    config, base_dir, tokenizers = _prepare(config, ckpt, out, env)

    # -- data: load, split, encode once (with the serving encoder) --------------------------------
    data = _encode_data(config, env.world, base_dir, tokenizers)
    total_steps = config.max_steps or max(1, int(config.epochs * data.per_epoch) // config.grad_accum)

    # -- model and optimizer ----------------------------------------------------------------------
    raw_model, model, optimizer = _model_and_optimizer(config, env, ckpt, data)
    input_names = accepted_input_names(raw_model)
    start_step = ckpt.step if ckpt else 0
    logger = None
    if env.is_main:
        logger = JsonlLogger(out / "metrics.jsonl", keep_until_step=start_step if ckpt else None)
        if not ckpt:
            _describe_run(config, data, total_steps)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and env.is_main), desc="train-rm")
    stream = _micro_batches(config, data, env, start_step * config.grad_accum)

    # -- the loop: one optimizer step per iteration -----------------------------------------------
    val_metrics: dict[str, float] = {}
    t_loop, cpu_loop = time.time(), time.process_time()
    for step in range(start_step, total_steps):
        t0 = time.time()
        torch.manual_seed(step_seed(config.seed, step, env.rank))  # dropout masks of this step
        lr = lr_at(step, total_steps, config)
        result = _optimizer_step(model, raw_model, optimizer, stream, input_names, data, config, env, lr)
        done = step + 1

        # -- bookkeeping (rank 0): metrics, validation, checkpoint --------------------------------
        if logger is not None:
            _log_step(logger, bar, done, result, lr, time.time() - t0, env.world)
        bar.update(1)
        if logger is not None and _due(config.eval_every, done, total_steps):
            val_metrics = validate(raw_model, data.encoder, data.val_pairs, config, env.device)
            logger.log({"step": done, **{f"val_{k}": v for k, v in val_metrics.items()}})
            plot_run(out)
        if env.is_main and _due(config.checkpoint_every, done, total_steps):
            save_checkpoint(
                out, raw_model, optimizer, config, data.tokenizer_files[0], done, done * config.grad_accum
            )
        if on_step is not None:
            on_step(done)
    bar.close()
    loop_time, loop_cpu = time.time() - t_loop, time.process_time() - cpu_loop

    # -- final model: validation, score statistics, OUT/final ------------------------------------
    final_dir = out / "final"
    if logger is not None:
        timings = {"loop_time_s": loop_time, "loop_cpu_s": loop_cpu}
        val_metrics = _write_final(out, raw_model, data, config, env, logger, total_steps, t_start, timings)
    if env.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(out, final_dir, total_steps, val_metrics, time.time() - t_start, loop_time, loop_cpu)


def _prepare(
    config: RewardConfig, ckpt: Checkpoint | None, out: Path, env: DistEnv
) -> tuple[RewardConfig, str, Path]:
    """(the run's config, its base model's directory or hub name, its tokenizer directory).

    A resumed run keeps its saved config (but for this machine's device and workers). A new run
    records its data path absolute, so `rlhf export` can re-create the split from anywhere, and the
    input format it resolved (``auto`` → ``chat`` when the base has a chat template, else ``pair``),
    so OUT/final says how to encode for it whatever the defaults become. The tokenizer directory is
    OUT/tokenizer (`encoders.prepare_run_tokenizer`). Rank 0 materialises a named base (smollm2) and
    writes OUT/tokenizer while the other ranks wait: no two processes write one directory at once."""
    if ckpt is not None:
        config = replace(ckpt.config, device=config.device, num_workers=config.num_workers)
    if env.world > 1 and not env.is_main:
        dist.barrier()
    base_dir = resolve_base_model(config.base_model)
    base_tokenizer = tokenizer_dir(base_dir)
    if ckpt is None:
        data = str(Path(config.data).resolve()) if config.data is not None else None
        input_format = resolve_input_format(base_tokenizer, config.input_format)
        config = replace(config, data=data, input_format=input_format)
    tokenizers = out / RUN_TOKENIZER_DIR
    if env.is_main:
        prepare_run_tokenizer(base_tokenizer, config.input_format, tokenizers)
        if env.world > 1:
            dist.barrier()
    return config, base_dir, tokenizers


def _encode_data(config: RewardConfig, world: int, base_dir: str, tokenizers: Path) -> EncodedData:
    """Load and split the pairs, encode the training split once, count the batches per process."""
    report = load_pairs(config.data)
    train_pairs, val_pairs = split_pairs(report.pairs, config.val_fraction, config.seed)
    encoder = model_encoder(tokenizers, config.input_format, config.max_length, config.min_question_tokens)
    chosen, rejected = encode_pairs(encoder, train_pairs)
    lengths = pair_lengths(chosen, rejected)
    n_batches = len(
        length_grouped_batches(lengths, config.batch_size, config.seed, 0, config.length_group_batches)
    )
    per_epoch = n_batches // world  # batches per process per epoch
    assert per_epoch >= 1, f"{len(train_pairs)} training pairs make no batch for each of {world} processes"
    weights = bootstrap_weights(len(train_pairs), config.quality_heads, config.seed)
    balance = None
    if config.length_balance_bins:
        balanced, balance = length_balance_weights(
            np.array([c.answer_tokens for c in chosen]),
            np.array([r.answer_tokens for r in rejected]),
            config.length_balance_bins,
        )
        weights = weights * balanced[:, None]
    files = tokenizer_files(tokenizers)
    return EncodedData(
        report,
        train_pairs,
        val_pairs,
        base_dir,
        files,
        encoder,
        chosen,
        rejected,
        lengths,
        per_epoch,
        weights,
        balance,
    )


def _model_and_optimizer(
    config: RewardConfig, env: DistEnv, ckpt: Checkpoint | None, data: EncodedData
) -> tuple[PreTrainedModel, torch.nn.Module, torch.optim.Optimizer]:
    """(the model, the model as trained: DDP-wrapped under several processes, AdamW), restored on resume.

    With ``lora_r`` the model is the base wrapped by peft (adapters + the heads train); a LoRA
    checkpoint holds only those, so a resumed run re-loads the base and puts them back."""
    torch.manual_seed(config.seed)  # the fresh heads' initialisation (one random row per head)
    layout = HeadLayout(config.quality_heads, config.length_head)
    full_checkpoint = ckpt is not None and not config.lora_r
    raw_model = load_reward_model(str(ckpt.path) if ckpt and full_checkpoint else data.base_dir, layout)
    # one pad id, the bundle's: transformers' own pooling (a user loading OUT/final) then agrees with ours
    raw_model.config.pad_token_id = data.encoder.pad_token_id
    if config.disable_dropout:
        disable_dropout(raw_model)  # before LoRA: the adapters keep config.lora_dropout
    if config.lora_r:
        raw_model = resume_reward_lora(raw_model, ckpt.path) if ckpt else add_reward_lora(raw_model, config)
    raw_model.to(env.device)  # type: ignore[arg-type]  # in place; transformers types .to() oddly
    raw_model.train()
    optimizer = torch.optim.AdamW(_param_groups(raw_model, config.weight_decay), lr=config.lr)
    if ckpt:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        torch.set_rng_state(ckpt.state["rng_cpu"])
    model: torch.nn.Module = raw_model
    if env.world > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw_model, device_ids=device_ids)
    return raw_model, model, optimizer


def _optimizer_step(
    model: torch.nn.Module,
    raw_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[tuple[int, dict[str, np.ndarray]]],
    input_names: list[str],
    data: EncodedData,
    config: RewardConfig,
    env: DistEnv,
    lr: float,
) -> StepResult:
    """Forward/backward over ``grad_accum`` micro-batches, then one clipped AdamW step at ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums: dict[str, float] = {}
    tokens = epoch = 0
    for micro in range(config.grad_accum):
        epoch, batch = next(stream)
        sync = micro == config.grad_accum - 1 or env.world == 1  # DDP syncs gradients on the last one only
        with contextlib.nullcontext() if sync else model.no_sync():  # type: ignore[operator]
            logits = reward_logits(model, **model_inputs(batch, input_names, env.device))  # [2B, heads]
            loss, metrics = _loss(logits, batch, raw_model, data, config)
            (loss / config.grad_accum).backward()
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value / config.grad_accum
        tokens += int(batch["attention_mask"].sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.clip_grad or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(epoch, sums, float(grad_norm), tokens)


def _loss(
    logits: torch.Tensor,
    batch: dict[str, np.ndarray],
    raw_model: torch.nn.Module,
    data: EncodedData,
    config: RewardConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The multi-head loss of one micro-batch (the plain pairwise loss for one head; see losses.py)."""
    lengths = weights = classifier = None
    if config.length_head or config.decorrelate_length:
        lengths = torch.from_numpy(batch["answer_tokens"]).to(logits.device)  # [2B]
    if config.length_head:
        classifier = head_weight(raw_model)  # type: ignore[arg-type]  # [heads, hidden]
    if config.quality_heads > 1 or config.length_balance_bins:
        weights = torch.from_numpy(data.pair_weights[batch["pair_index"]]).to(logits.device)  # [B, M]
    return multi_head_loss(
        logits,
        lengths,
        quality_heads=config.quality_heads,
        length_head=config.length_head,
        pair_weights=weights,
        margin=config.margin or None,
        center_coef=config.center_coef,
        length_coef=config.length_coef,
        ortho_coef=config.ortho_coef,
        head_weight=classifier,
        decorrelate_only=config.decorrelate_length,
        length_head_sign=config.length_head_sign,
    )


def _log_step(
    logger: JsonlLogger, bar: tqdm, done: int, result: StepResult, lr: float, dt: float, world: int
) -> None:
    """One metrics.jsonl record per optimizer step, and the progress bar's figures."""
    logger.log(
        {
            "step": done,
            "epoch": result.epoch,
            **result.sums,
            "lr": lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": result.tokens * world / dt,
            "step_time_s": dt,
        }
    )
    bar.set_postfix(loss=f"{result.sums['loss']:.3f}", acc=f"{result.sums['accuracy']:.2f}", lr=f"{lr:.1e}")


def _due(every: int, done: int, total_steps: int) -> bool:
    """A periodic validation or checkpoint is due after step ``done`` (the last step has its own)."""
    return bool(every) and done % every == 0 and done < total_steps


def _write_final(
    out: Path,
    raw_model: PreTrainedModel,
    data: EncodedData,
    config: RewardConfig,
    env: DistEnv,
    logger: JsonlLogger,
    total_steps: int,
    t_start: float,
    timings: dict[str, float],
) -> dict[str, float]:
    """Validate the final model, measure its train-set score mean/std, write OUT/final; rank 0 only.

    A LoRA model is merged first, so the numbers are those of the plain model OUT/final holds."""
    final_model = merged(raw_model)
    val_metrics = validate(final_model, data.encoder, data.val_pairs, config, env.device)
    if val_metrics:
        logger.log({"step": total_steps, **{f"val_{k}": v for k, v in val_metrics.items()}})
    stats = score_stats(final_model, data.encoder, data.train_pairs, config, env.device)
    summary = {
        **{f"val_{k}": v for k, v in val_metrics.items()},
        "train_pairs": len(data.train_pairs),
        "steps": total_steps,
        "data": data.report.source,
        "skipped": data.report.skipped,
        "skipped_reasons": data.report.skipped_reasons,
        "wall_time_s": time.time() - t_start,
        **timings,
    }
    final_dir = out / "final"
    write_final(final_dir, final_model, config, data.tokenizer_files, stats, summary)
    plot_run(out)
    if val_metrics:
        print(f"{describe_validation(val_metrics)}; model in {final_dir}")
    return val_metrics


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: decaying biases and LayerNorm gains just hurts (BERT recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _micro_batches(
    config: RewardConfig, data: EncodedData, env: DistEnv, start: int
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Endless (epoch, padded batch) stream of this rank, starting at micro-batch ``start``."""
    epoch, position = divmod(start, data.per_epoch)
    while True:
        batches = length_grouped_batches(
            data.lengths, config.batch_size, config.seed, epoch, config.length_group_batches
        )
        mine = batches[env.rank :: env.world][: data.per_epoch][position:]  # equal counts keep DDP in step
        loader = torch.utils.data.DataLoader(
            _Collated(data.chosen, data.rejected, mine, data.encoder.pad_token_id),
            batch_size=None,
            num_workers=config.num_workers,
            # its own generator: a DataLoader iterator otherwise draws from the global RNG, which
            # would shift the dropout masks of whichever step (re)starts an epoch
            generator=torch.Generator().manual_seed(config.seed),
        )
        for batch in loader:
            yield epoch, {k: np.asarray(v) for k, v in batch.items()}
        epoch, position = epoch + 1, 0


class _Collated(torch.utils.data.Dataset):
    """Index i -> the padded batch i with its pair indices and answer tokens (lets a DataLoader pad in
    worker processes)."""

    def __init__(
        self, chosen: list[EncodedPair], rejected: list[EncodedPair], batches: list[list[int]], pad: int
    ):
        self.chosen, self.rejected, self.batches, self.pad = chosen, rejected, batches, pad

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """The padded inputs, the batch's pair indices [B] (bootstrap weights) and the answer tokens
        [2B] of its rows (the length head's L), chosen rows first like the inputs."""
        pairs = self.batches[i]
        tokens = [self.chosen[j].answer_tokens for j in pairs] + [
            self.rejected[j].answer_tokens for j in pairs
        ]
        return {
            **collate(self.chosen, self.rejected, pairs, self.pad),
            "pair_index": np.asarray(pairs, dtype=np.int64),
            "answer_tokens": np.asarray(tokens, dtype=np.float32),
        }


def _describe_run(config: RewardConfig, data: EncodedData, total_steps: int) -> None:
    report = data.report
    skipped = f", skipped {report.skipped} {report.skipped_reasons}" if report.skipped else ""
    print(f"data {report.source}: {len(data.train_pairs)} train / {len(data.val_pairs)} val pairs{skipped}")
    print(
        f"{total_steps} steps ({data.per_epoch} batches of {config.batch_size} pairs per epoch), "
        f"max_length {config.max_length}, lr {config.lr}"
    )
    tuning = f"LoRA r={config.lora_r}" if config.lora_r else "full fine-tuning"
    print(
        f"base {config.base_model}: {config.input_format} format ({data.encoder.truncation_policy_name}), {tuning}"
    )
    if data.length_balance is not None:
        print(data.length_balance.format_text())
