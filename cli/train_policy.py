"""`rlhf train-policy`: policy optimisation against a running scoring service.

    rlhf train-policy --service http://localhost:8000 --steps 30 --out runs/pi

torch, transformers and peft are imported inside the command, so `rlhf --help` stays instant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from training.policy.config import ESTIMATORS, PolicyConfig

H = PolicyConfig.help_texts()
D = PolicyConfig()  # defaults


def _modules(option: str | None) -> list[str] | None:
    """``--lora-target-modules q_proj,v_proj`` -> a list; unset keeps the config's default."""
    if option is None:
        return D.lora_target_modules
    return [m.strip() for m in option.split(",") if m.strip()] or None


def train_policy_command(
    service: Annotated[list[str], typer.Option("--service", help=H["service_urls"] + " Repeat for several.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help=H["prompts_file"])] = None,
    reward_run: Annotated[Path | None, typer.Option("--reward-run", help=H["reward_run"])] = None,
    steps: Annotated[int, typer.Option(help=H["steps"])] = D.steps,
    out: Annotated[Path, typer.Option(help=H["out"])] = Path(D.out),
    estimator: Annotated[str, typer.Option(help=H["estimator"])] = D.estimator,
    baseline: Annotated[str, typer.Option(help=H["baseline"])] = D.baseline,
    ppo_epochs: Annotated[int, typer.Option(help=H["ppo_epochs"])] = D.ppo_epochs,
    clip_eps: Annotated[float, typer.Option(help=H["clip_eps"])] = D.clip_eps,
    kl_coef: Annotated[float, typer.Option(help=H["kl_coef"])] = D.kl_coef,
    kl_target: Annotated[float | None, typer.Option(help=H["kl_target"])] = D.kl_target,
    kl_adapt_rate: Annotated[float, typer.Option(help=H["kl_adapt_rate"])] = D.kl_adapt_rate,
    gamma: Annotated[float, typer.Option(help=H["gamma"])] = D.gamma,
    normalize_advantages: Annotated[
        bool, typer.Option("--normalize-advantages/--no-normalize-advantages", help=H["normalize_advantages"])
    ] = D.normalize_advantages,
    entropy_coef: Annotated[float, typer.Option(help=H["entropy_coef"])] = D.entropy_coef,
    k: Annotated[int, typer.Option("--k", help=H["k"])] = D.k,
    prompts_per_step: Annotated[int, typer.Option(help=H["prompts_per_step"])] = D.prompts_per_step,
    max_new_tokens: Annotated[int, typer.Option(help=H["max_new_tokens"])] = D.max_new_tokens,
    temperature: Annotated[float, typer.Option(help=H["temperature"])] = D.temperature,
    top_p: Annotated[float, typer.Option(help=H["top_p"])] = D.top_p,
    lr: Annotated[float, typer.Option(help=H["lr"])] = D.lr,
    max_grad_norm: Annotated[float, typer.Option(help=H["max_grad_norm"])] = D.max_grad_norm,
    lora_r: Annotated[int, typer.Option(help=H["lora_r"])] = D.lora_r,
    lora_alpha: Annotated[int, typer.Option(help=H["lora_alpha"])] = D.lora_alpha,
    lora_target_modules: Annotated[
        str | None,
        typer.Option(
            help=H["lora_target_modules"] + " Comma-separated, e.g. q_proj,v_proj; default all-linear."
        ),
    ] = None,
    full_finetune: Annotated[bool, typer.Option("--full-finetune", help=H["full_finetune"])] = False,
    model: Annotated[str | None, typer.Option(help=H["model"])] = None,
    gguf_file: Annotated[str | None, typer.Option(help=H["gguf_file"])] = None,
    device: Annotated[str, typer.Option(help=H["device"])] = D.device,
    seed: Annotated[int, typer.Option(help=H["seed"])] = D.seed,
    eval_prompts: Annotated[int, typer.Option(help=H["eval_prompts"])] = D.eval_prompts,
    eval_samples: Annotated[int, typer.Option(help=H["eval_samples"])] = D.eval_samples,
    eval_greedy: Annotated[
        bool, typer.Option("--eval-greedy/--no-eval-greedy", help=H["eval_greedy"])
    ] = D.eval_greedy,
    skip_eval: Annotated[bool, typer.Option("--skip-eval", help=H["skip_eval"])] = False,
    reward_key: Annotated[str, typer.Option(help=H["reward_key"])] = D.reward_key,
    max_failed_fraction: Annotated[
        float, typer.Option(help=H["max_failed_fraction"])
    ] = D.max_failed_fraction,
    allow_model_change: Annotated[
        bool, typer.Option("--allow-model-change", help=H["allow_model_change"])
    ] = False,
    checkpoint_every: Annotated[int, typer.Option(help=H["checkpoint_every"])] = D.checkpoint_every,
    resume: Annotated[bool, typer.Option("--resume", help=H["resume"])] = False,
    merge: Annotated[bool, typer.Option("--merge", help=H["merge"])] = False,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="RLHF_API_KEY", help=H["api_key"], show_default=False)
    ] = None,
    request_timeout: Annotated[float, typer.Option(help=H["request_timeout"])] = D.request_timeout,
    max_retries: Annotated[int, typer.Option(help=H["max_retries"])] = D.max_retries,
    gen_threads: Annotated[int, typer.Option(help=H["gen_threads"])] = D.gen_threads,
    generation_batch_prompts: Annotated[
        int, typer.Option(help=H["generation_batch_prompts"])
    ] = D.generation_batch_prompts,
    train_threads: Annotated[int, typer.Option(help=H["train_threads"])] = D.train_threads,
    max_prompt_tokens: Annotated[int, typer.Option(help=H["max_prompt_tokens"])] = D.max_prompt_tokens,
) -> None:
    """Optimise a causal LM by policy gradient against the scoring service's rewards."""
    from training.policy.errors import PolicyTrainingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scoring request is noise
    if estimator not in ESTIMATORS:
        raise typer.BadParameter(f"--estimator must be one of {', '.join(ESTIMATORS)}")
    try:
        config = PolicyConfig(
            service_urls=list(service), api_key=api_key, request_timeout=request_timeout,
            max_retries=max_retries, max_prompt_tokens=max_prompt_tokens, gen_threads=gen_threads,
            train_threads=train_threads, generation_batch_prompts=generation_batch_prompts,
            reward_key=reward_key, max_failed_fraction=max_failed_fraction,
            allow_model_change=allow_model_change, model=model, gguf_file=gguf_file, device=device,
            full_finetune=full_finetune, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_target_modules=_modules(lora_target_modules),
            prompts_file=str(prompts) if prompts else None,
            reward_run=str(reward_run) if reward_run else None,
            eval_prompts=eval_prompts, eval_samples=eval_samples, eval_greedy=eval_greedy, k=k,
            prompts_per_step=prompts_per_step,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, estimator=estimator,
            baseline=baseline, gamma=gamma, kl_coef=kl_coef, kl_target=kl_target,
            kl_adapt_rate=kl_adapt_rate, normalize_advantages=normalize_advantages,
            entropy_coef=entropy_coef, ppo_epochs=ppo_epochs, clip_eps=clip_eps, steps=steps, lr=lr,
            max_grad_norm=max_grad_norm, seed=seed, out=str(out), checkpoint_every=checkpoint_every,
            resume=resume, merge=merge, skip_eval=skip_eval,
        )  # fmt: skip
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    from service.client import RewardClientError
    from training.policy.trainer import train

    try:
        summary = train(config)
    except (PolicyTrainingError, RewardClientError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from err
    typer.echo(json.dumps(summary, indent=2))
    before, after = summary.get("before"), summary.get("after")
    if before and after:
        typer.echo(
            f"held-out reward: {before['mean_raw']:.3f} -> {after['mean_raw']:.3f} "
            f"({summary['gain_in_std']:+.2f} RM score std), KL {summary.get('kl_last')}, "
            f"scoring share {summary.get('scoring_share_mean', 0):.1%}"
        )
