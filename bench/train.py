"""`rlhf bench train`: our training loop against TRL's `RewardTrainer`, side by side in one run.

    rlhf bench train --out runs/bench-train                        # full comparison (3 trainings)
    rlhf bench train --limit 240 --out /tmp/bench-smoke            # smoke run on 240 pairs
    rlhf bench train --reuse-ours runs/rm-default                  # all-pairs model from an existing run

Same pairs (the training split of the data), same base model, 1 epoch, batch size 16, same LR
schedule, fp32 on both sides. Held-out set: the validation split (the true hh-rlhf held-out rows are
not shipped). Measured:

* held-out pairwise accuracy of TRL (it drops every pair whose chosen or rejected text exceeds
  ``max_length``), of our loop on all pairs (question cut from the left, nothing dropped), and of our
  loop on exactly the pairs TRL keeps;
* training wall time of the optimizer loops on the pairs TRL keeps (ratio ours / TRL);
* padded tokens of one epoch: TRL's shuffled batches vs our length-grouped batches.

TRL settings that would make the comparison about something else are aligned: ``bf16=False`` and
``activation_checkpointing=False`` (TRL's defaults turn bf16 and gradient checkpointing on; our
loop runs fp32 without checkpointing). TRL tokenises ``prompt + answer`` as one text and appends ``eos_token``, which BERT
tokenizers lack; the bench passes the ids TRL's tokenise step would otherwise produce (the
tokenizer's ``[CLS] text [SEP]``) as ``chosen_ids``/``rejected_ids``, and TRL then filters and
collates them itself. TRL's model is scored with the same single-text format, twice: as TRL leaves
it (the tokenizer's own truncation, from the right, which cuts the answers of long held-out pairs, as
a user scoring with that model would), and with our policy applied to it (truncated from the left
so that long held-out pairs keep their answers). Both numbers are reported; the gain is given
against each.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bench.padding import padding_stats, random_batches
from training.reward.config import RewardConfig
from training.reward.diagnostics import paired_gain

if TYPE_CHECKING:
    from training.reward.data import PreferencePair


def bench_train_command(
    out: Annotated[Path, typer.Option(help="Directory for the JSON result, the runs and their data.")] = Path(
        "runs/bench-train"
    ),
    data: Annotated[
        str | None, typer.Option(help="Preference data (default: the embedded hh-rlhf pairs).")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Base model dir or hub name on both sides (default: embedded MiniLM).")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Use only the first N pairs (0 = all): for a quick smoke run.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch on both sides.")] = 16,
    max_length: Annotated[int, typer.Option(help="Max tokens per sequence on both sides.")] = 256,
    min_question_tokens: Annotated[
        int, typer.Option(help="Our truncation policy: question tokens kept before the answer is cut.")
    ] = 32,
    lr: Annotated[float | None, typer.Option(help="Peak LR on both sides (default: RewardConfig's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of split, init and batch order on both sides.")] = 0,
    reuse_ours: Annotated[
        Path | None,
        typer.Option(
            help="Score the final model of this finished `rlhf train-rm` run (same data, seed, split, "
            "batch size, 1 epoch) instead of training ours on all pairs again."
        ),
    ] = None,
    skip_trl: Annotated[bool, typer.Option(help="Only our side (when trl is not installed).")] = False,
) -> None:
    """Our loop vs TRL RewardTrainer: held-out accuracy, wall-time ratio, padded-token ratio."""
    base = RewardConfig(
        data=data,
        seed=seed,
        batch_size=batch_size,
        max_length=max_length,
        min_question_tokens=min_question_tokens,
        epochs=1.0,
        max_steps=0,
        eval_every=0,
        checkpoint_every=0,
        device="cpu",
    )
    if lr is not None:
        base = replace(base, lr=lr)
    if base_model is not None:
        base = replace(base, base_model=base_model)
    result = run_bench(base, out, limit, reuse_ours, skip_trl)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'bench_train.json'}")


@dataclass
class BenchPairs:
    """The pairs both sides train on, with the ids TRL's tokenise step would produce for them."""

    train_pairs: list[PreferencePair]
    val_pairs: list[PreferencePair]  # the held-out set of every side
    hf_tokenizer: Any  # the base model's Hugging Face tokenizer (TRL's processing class)
    trl_chosen: list[list[int]]  # [CLS] question + chosen [SEP] of every training pair, untruncated
    trl_rejected: list[list[int]]
    kept: list[int]  # training pairs TRL keeps: both sides within max_length

    @property
    def kept_pairs(self) -> list[PreferencePair]:
        return [self.train_pairs[i] for i in self.kept]


def run_bench(
    base: RewardConfig, out: Path, limit: int, reuse_ours: Path | None, skip_trl: bool
) -> dict[str, Any]:
    """Every side in turn; OUT/bench_train.json is rewritten after each, so a stopped run keeps its parts."""
    out.mkdir(parents=True, exist_ok=True)
    pairs = _bench_pairs(base, limit)
    result = _setup_record(base, pairs, limit)
    _save(out, result)

    # TRL's RewardTrainer on the pairs it keeps
    if not skip_trl:
        result["trl"] = _run_trl(base, pairs, out / "trl")
        _save(out, result)

    # our loop on exactly the pairs TRL keeps: the time comparison
    kept_file = _write_pairs(out / "data" / "trl-kept-train.jsonl", pairs.kept_pairs)
    kept_run = _train_ours(replace(base, data=str(kept_file), val_fraction=0.0), out / "ours-kept")
    result["ours_kept"] = {**kept_run, **_heldout_ours(Path(kept_run["final_dir"]), base, pairs.val_pairs)}
    if "trl" in result:
        # wall time is what the target names; CPU seconds of the process are the robust twin of it
        # on a machine shared with other jobs (both sides run the same number of threads)
        result["wall_time_ratio_ours_over_trl"] = (
            result["ours_kept"]["train_time_s"] / result["trl"]["train_time_s"]
        )
        result["cpu_time_ratio_ours_over_trl"] = (
            result["ours_kept"]["train_cpu_s"] / result["trl"]["train_cpu_s"]
        )
    _save(out, result)

    # our loop on every training pair: the accuracy comparison
    all_run = _ours_on_all_pairs(base, pairs, out, reuse_ours, limit)
    result["ours_all"] = {**all_run, **_heldout_ours(Path(all_run["final_dir"]), base, pairs.val_pairs)}
    if "trl" in result:
        result.update(_accuracy_gains(result["ours_all"], result["trl"]))
    _save(out, result)
    return result


def _bench_pairs(base: RewardConfig, limit: int) -> BenchPairs:
    """Split the data as training does; tokenise every training pair as TRL would, to see what it keeps."""
    from transformers import AutoTokenizer

    from training.reward.data import load_pairs, split_pairs

    pairs = load_pairs(base.data).pairs
    pairs = pairs[:limit] if limit else pairs
    train_pairs, val_pairs = split_pairs(pairs, base.val_fraction, base.seed)
    hf_tok = AutoTokenizer.from_pretrained(base.base_model)
    trl_c = hf_tok([p.question + p.chosen for p in train_pairs])["input_ids"]
    trl_r = hf_tok([p.question + p.rejected for p in train_pairs])["input_ids"]
    kept = [i for i in range(len(train_pairs)) if max(len(trl_c[i]), len(trl_r[i])) <= base.max_length]
    return BenchPairs(train_pairs, val_pairs, hf_tok, trl_c, trl_r, kept)


def _setup_record(base: RewardConfig, pairs: BenchPairs, limit: int) -> dict[str, Any]:
    """The settings, the pair counts and the padded tokens of one epoch on each side."""
    from service.encoding import PairEncoder, TruncationPolicy
    from training.reward.batching import encode_pairs, length_grouped_batches, pair_lengths
    from training.reward.model import tokenizer_json_path

    encoder = PairEncoder.from_file(
        tokenizer_json_path(base.base_model), TruncationPolicy(base.max_length, base.min_question_tokens)
    )
    ours_c, ours_r = encode_pairs(encoder, pairs.kept_pairs)
    ours_pad = padding_stats(
        length_grouped_batches(
            pair_lengths(ours_c, ours_r), base.batch_size, base.seed, 0, base.length_group_batches
        ),
        [len(e) for e in ours_c],
        [len(e) for e in ours_r],
    )
    trl_pad = padding_stats(
        random_batches(len(pairs.kept), base.batch_size, base.seed),
        [len(pairs.trl_chosen[i]) for i in pairs.kept],
        [len(pairs.trl_rejected[i]) for i in pairs.kept],
    )
    n_train = len(pairs.train_pairs)
    return {
        "data": str(base.data or "embedded hh-rlhf-harmless-2000"),
        "limit": limit,
        "train_pairs": n_train,
        "trl_kept_pairs": len(pairs.kept),
        "trl_dropped_fraction": 1 - len(pairs.kept) / max(1, n_train),
        "heldout_pairs": len(pairs.val_pairs),
        "batch_size": base.batch_size,
        "max_length": base.max_length,
        "lr": base.lr,
        "base_model": base.base_model,
        "padding": {
            "trl": trl_pad,
            "ours": ours_pad,
            "pad_token_ratio_trl_over_ours": trl_pad["pad_tokens"] / max(1, ours_pad["pad_tokens"]),
            "padded_token_ratio_trl_over_ours": trl_pad["padded_tokens"] / max(1, ours_pad["padded_tokens"]),
        },
    }


def _run_trl(base: RewardConfig, pairs: BenchPairs, out: Path) -> dict[str, Any]:
    """Train with TRL on the kept pairs; score its model as TRL leaves it and with our truncation."""
    chosen = [pairs.trl_chosen[i] for i in pairs.kept]
    rejected = [pairs.trl_rejected[i] for i in pairs.kept]
    run = _train_trl(base, pairs.hf_tokenizer, chosen, rejected, out)
    model = run.pop("model")
    return {
        **run,
        **_heldout_trl(model, pairs.hf_tokenizer, pairs.val_pairs, base, side="right"),
        **_heldout_trl(
            model, pairs.hf_tokenizer, pairs.val_pairs, base, side="left", suffix="_left_truncated"
        ),
    }


def _ours_on_all_pairs(
    base: RewardConfig, pairs: BenchPairs, out: Path, reuse_ours: Path | None, limit: int
) -> dict[str, Any]:
    """Train our loop on every training pair, or reuse a finished `rlhf train-rm` run of the same settings."""
    if reuse_ours is None:
        all_file = _write_pairs(out / "data" / "all-train.jsonl", pairs.train_pairs)
        return _train_ours(replace(base, data=str(all_file), val_fraction=0.0), out / "ours-all")
    final = reuse_ours / "final"
    saved = RewardConfig.load(final / "reward_config.json")
    mismatch = {
        k: (getattr(saved, k), getattr(base, k))
        for k in ("seed", "val_fraction", "batch_size", "max_length", "epochs")
        if getattr(saved, k) != getattr(base, k)
    }
    if mismatch or limit:
        raise typer.BadParameter(f"--reuse-ours run differs from the bench settings: {mismatch or 'limit'}")
    return {"final_dir": str(final), "reused": True}


def _accuracy_gains(ours_all: dict[str, Any], trl: dict[str, Any]) -> dict[str, float]:
    """Held-out accuracy gain of ours (all pairs) over TRL, as TRL leaves it and with our truncation."""
    gain, se = paired_gain(ours_all["heldout_correct"], trl["heldout_correct"])
    gain_left, se_left = paired_gain(ours_all["heldout_correct"], trl["heldout_correct_left_truncated"])
    return {
        "accuracy_gain_points": gain,
        "accuracy_gain_se_points": se,
        "accuracy_gain_points_vs_trl_left_truncated": gain_left,
        "accuracy_gain_se_points_vs_trl_left_truncated": se_left,
    }


def _train_ours(config: RewardConfig, out: Path) -> dict[str, Any]:
    from training.reward.train import train

    run = train(config, out, progress=True)
    return {
        "train_time_s": run.loop_time_s,
        "train_cpu_s": run.loop_cpu_s,
        "steps": run.steps,
        "final_dir": str(run.final_dir),
    }


def _train_trl(
    base: RewardConfig, tokenizer: Any, chosen_ids: list, rejected_ids: list, out: Path
) -> dict[str, Any]:
    import datasets
    import torch
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from training.reward.model import load_reward_model

    torch.manual_seed(base.seed)
    model = load_reward_model(base.base_model)
    args = TRLRewardConfig(
        output_dir=str(out),
        per_device_train_batch_size=base.batch_size,
        num_train_epochs=1,
        learning_rate=base.lr,
        lr_scheduler_type=base.decay,
        warmup_steps=base.warmup_ratio,
        weight_decay=base.weight_decay,
        max_grad_norm=base.clip_grad,
        max_length=base.max_length,
        center_rewards_coefficient=base.center_coef or None,
        seed=base.seed,
        data_seed=base.seed,
        bf16=False,
        activation_checkpointing=False,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
    )
    dataset = datasets.Dataset.from_dict({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start, cpu_start = time.time(), time.process_time()
    trainer.train()
    elapsed, cpu = time.time() - start, time.process_time() - cpu_start
    return {
        "train_time_s": elapsed,
        "train_cpu_s": cpu,
        "steps": trainer.state.global_step,
        "trained_pairs": int(getattr(trainer.train_dataset, "num_rows", -1)),
        "model": trainer.model,
    }


def _heldout_ours(final_dir: Path, base: RewardConfig, val_pairs: list) -> dict[str, Any]:
    from service.encoding import PairEncoder, TruncationPolicy
    from training.reward.model import load_reward_model, score_pairs

    saved = RewardConfig.load(final_dir / "reward_config.json")
    encoder = PairEncoder.from_file(
        final_dir / "tokenizer.json", TruncationPolicy(saved.max_length, saved.min_question_tokens)
    )
    model = load_reward_model(str(final_dir))
    questions = [p.question for p in val_pairs]
    r_c = score_pairs(model, encoder, questions, [p.chosen for p in val_pairs], 32)
    r_r = score_pairs(model, encoder, questions, [p.rejected for p in val_pairs], 32)
    return _heldout_summary(r_c, r_r)


def _heldout_trl(
    model: Any, tokenizer: Any, val_pairs: list, base: RewardConfig, side: str, suffix: str = ""
) -> dict[str, Any]:
    import numpy as np
    import torch

    tokenizer.truncation_side = side
    model.eval()
    scores = []
    with torch.no_grad():
        for answers in ([p.chosen for p in val_pairs], [p.rejected for p in val_pairs]):
            texts = [p.question + a for p, a in zip(val_pairs, answers, strict=True)]
            out = np.empty(len(texts))
            for start in range(0, len(texts), 32):
                enc = tokenizer(
                    texts[start : start + 32],
                    truncation=True,
                    max_length=base.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                out[start : start + 32] = model(**enc).logits[:, 0].double().numpy()
            scores.append(out)
    r_c, r_r = scores
    return _heldout_summary(r_c, r_r, suffix)


def _heldout_summary(r_c: Any, r_r: Any, suffix: str = "") -> dict[str, Any]:
    """Accuracy (ties count as wrong), mean margin, and which pairs were right (for paired errors)."""
    correct = r_c > r_r
    return {
        f"heldout_accuracy{suffix}": float(correct.mean()),
        f"heldout_margin{suffix}": float((r_c - r_r).mean()),
        f"heldout_correct{suffix}": [bool(c) for c in correct],
    }


def _write_pairs(path: Path, pairs: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for p in pairs:
            handle.write(
                json.dumps({"question": p.question, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            )
    return path


def _save(out: Path, result: dict[str, Any]) -> None:
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the comparison (missing parts shown as '-')."""

    def cell(side: str, key: str, fmt: str) -> str:
        value = result.get(side, {}).get(key)
        return format(value, fmt) if value is not None else "-"

    pad = result["padding"]
    lines = [
        f"pairs: {result['train_pairs']} train ({result['trl_kept_pairs']} kept by TRL, "
        f"{100 * result['trl_dropped_fraction']:.1f}% dropped), {result['heldout_pairs']} held out",
        f"{'run':<28}{'held-out acc':>14}{'train time s':>14}{'train CPU s':>14}",
        *(
            f"{label:<28}{cell(side, 'heldout_accuracy', '.3f'):>14}{cell(side, 'train_time_s', '.0f'):>14}"
            f"{cell(side, 'train_cpu_s', '.0f'):>14}"
            for label, side in (
                ("TRL RewardTrainer (kept)", "trl"),
                ("ours (TRL-kept pairs)", "ours_kept"),
                ("ours (all pairs)", "ours_all"),
            )
        ),
    ]
    if "wall_time_ratio_ours_over_trl" in result:
        lines.append(
            f"time ours/TRL on TRL-kept pairs: wall {result['wall_time_ratio_ours_over_trl']:.2f}x, "
            f"CPU {result['cpu_time_ratio_ours_over_trl']:.2f}x"
        )
    left = result.get("trl", {}).get("heldout_accuracy_left_truncated")
    if left is not None:
        lines.append(f"TRL scored with our left truncation: held-out acc {left:.3f}")
    if "accuracy_gain_points" in result:
        lines.append(
            f"held-out accuracy ours(all) - TRL: {result['accuracy_gain_points']:+.1f} "
            f"± {result['accuracy_gain_se_points']:.1f} points (paired s.e.); vs TRL with our truncation: "
            f"{result['accuracy_gain_points_vs_trl_left_truncated']:+.1f} "
            f"± {result['accuracy_gain_se_points_vs_trl_left_truncated']:.1f}"
        )
    lines.append(
        f"padded tokens per epoch TRL/ours: {pad['padded_token_ratio_trl_over_ours']:.2f}x "
        f"(padding tokens alone {pad['pad_token_ratio_trl_over_ours']:.2f}x)"
    )
    return "\n".join(lines)
