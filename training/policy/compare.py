"""Finished policy runs side by side: what each policy became, judged by one gold none of them optimised.

    runs = [load_run(Path("runs/pg-plain")), load_run(Path("runs/pg-odin"), label="odin")]
    comparison = compare_runs(runs, GoldScorer.load("bundles/gold"))   # None: the gold stored in the runs
    row = comparison.rows[0]
    row.gold.gain, row.gold.gain_se, row.length_within                 # +0.12, 0.05, False

Why: each run reports its gain in its own proxy's std, and runs that optimised different proxies
(plain, length-disentangled, uncertainty-penalised) can only be ranked by a reward none of them
climbed, and by the same one (Gao et al. 2022). With a gold bundle every before/after evaluation
sample of every run is re-scored here with that bundle's own encoder (`GoldScorer`), normalised by
its manifest's score statistics, the gain paired per prompt as the trainer pairs it (`rescore.py`,
which also recovers the full questions the samples cut). Without one the runs' stored gold serves,
and only if every run was judged by the same one (name, version, sha256).

Beside the rewards, the answers themselves: median length against the start (issue 13's target keeps
it within ``LENGTH_TOLERANCE``), the share saying "I'm sorry" and the share repeating a phrase
(`report.py`). torch-free: the gold runs on onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.policy.errors import PolicyTrainingError
from training.policy.evaluate import EvalResult
from training.policy.gold import GoldScorer
from training.policy.report import Sample, phrase_share, read_samples, repetition_share
from training.policy.rescore import QUESTION_TAIL, GoldReading, gold_reading, rescore_samples
from training.policy.summary import verdict
from training.runlog import read_jsonl

LENGTH_TOLERANCE = 0.30  # issue 13: a defended run keeps its median answer length within 30% of the start
REFUSAL = "I'm sorry"  # the phrase the default proxy was found to reward (issue 13)
RUN_FILES = ("config.json", "eval_before.json", "eval_after.json", "eval_before_samples.jsonl",
             "eval_after_samples.jsonl", "metrics.jsonl")  # fmt: skip


class CompareError(PolicyTrainingError):
    """The runs cannot be compared: one is missing or unfinished, or they were judged by different golds."""


@dataclass(frozen=True)
class PolicyRun:
    """One finished `rlhf train-policy --out` directory, as read from its files."""

    label: str  # the run's name in the table
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    before: EvalResult
    after: EvalResult
    before_samples: list[Sample]
    after_samples: list[Sample]
    metrics: list[dict[str, Any]]


@dataclass(frozen=True)
class RunRow:
    """Everything the table says about one run."""

    label: str
    path: str
    proxy: str  # name and version of the reward model the run optimised
    optimised: str  # which of its numbers: the (normalised) score, minus a multiple of its uncertainty
    steps: int | None
    proxy_gain: float  # in the proxy's own train-score std
    proxy_gain_se: float
    gold: GoldReading
    median_length: tuple[float, float]  # answer tokens, before and after
    mean_length: tuple[float, float]
    length_within: bool | None  # after's median within LENGTH_TOLERANCE of before's (None: undefined)
    kl_last: float
    sorry_share: tuple[float, float]
    repetition_share: tuple[float, float]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (NaN → null)."""
        return _json(dataclasses.asdict(self))


@dataclass
class Comparison:
    """The rows, the runs behind them (samples carrying the judging gold's scores), and that gold."""

    rows: list[RunRow]
    runs: list[PolicyRun]
    gold: dict[str, Any] | None  # name, version, sha256, source, score_mean, score_std; None: no gold
    notes: list[str] = field(default_factory=list)


def parse_run_argument(argument: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by its directory name) -> (label, path)."""
    label, sep, rest = argument.partition("=")
    if sep and label and rest and "/" not in label:
        return label, Path(rest)
    path = Path(argument)
    return path.resolve().name or argument, path


def load_run(path: Path, label: str | None = None) -> PolicyRun:
    """Read a finished run; a missing directory, an unfinished run or an unreadable file is a CompareError."""
    if not path.is_dir():
        raise CompareError(f"{path}: no such run directory")
    if not (path / "summary.json").is_file():
        raise CompareError(
            f"{path}: no summary.json: the run has not finished (or is not a train-policy --out)"
        )
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise CompareError(
            f"{path}: missing {', '.join(missing)} (a run with --skip-eval cannot be compared)"
        )

    def read(name: str, parse: Callable[[Path], Any]) -> Any:
        try:
            return parse(path / name)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError too
            raise CompareError(f"{path / name}: unreadable ({exc})") from exc

    def obj(file: Path) -> dict[str, Any]:
        value = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value

    return PolicyRun(
        label=label or path.resolve().name,
        path=path,
        config=read("config.json", obj),
        summary=read("summary.json", obj),
        before=read("eval_before.json", lambda f: EvalResult.from_dict(obj(f))),
        after=read("eval_after.json", lambda f: EvalResult.from_dict(obj(f))),
        before_samples=read("eval_before_samples.jsonl", read_samples),
        after_samples=read("eval_after_samples.jsonl", read_samples),
        metrics=read("metrics.jsonl", read_jsonl),
    )


def compare_runs(
    runs: Sequence[PolicyRun], gold: GoldScorer | None = None, gold_path: str = ""
) -> Comparison:
    """Judge every run; with ``gold`` its samples are re-scored by it, else the runs' one stored gold serves."""
    if not runs:
        raise CompareError("no runs to compare")
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise CompareError(f"two runs share a label ({', '.join(labels)}); name them with LABEL=DIR")
    if gold is None:
        info, readings = _stored_gold(runs)
        return Comparison(
            [_row(r, g, info is not None) for r, g in zip(runs, readings, strict=True)], list(runs), info
        )
    rescored, notes = _rescore(runs, gold)
    readings = [
        gold_reading(r.before_samples, r.after_samples, gold.score_mean, gold.score_std) for r in rescored
    ]
    described = gold.describe()
    info = {
        "name": described.get("name"),
        "version": described.get("version"),
        "sha256": described.get("sha256"),
        "source": f"re-scored in-process from {gold_path}" if gold_path else "re-scored in-process",
        "score_mean": gold.score_mean,
        "score_std": gold.score_std,
    }
    rows = [_row(run, reading, True) for run, reading in zip(rescored, readings, strict=True)]
    return Comparison(rows, rescored, info, notes)


def _rescore(runs: Sequence[PolicyRun], gold: GoldScorer) -> tuple[list[PolicyRun], list[str]]:
    """The runs with full questions and every sample's ``gold_score`` from ``gold``, and the notes."""
    groups = [(run.config, samples) for run in runs for samples in (run.before_samples, run.after_samples)]
    rescored = rescore_samples(groups, gold)
    judged, tails, chats = rescored.samples, rescored.tails, rescored.unmatched_chats
    out, notes = [], []
    for i, run in enumerate(runs):
        out.append(dataclasses.replace(run, before_samples=judged[2 * i], after_samples=judged[2 * i + 1]))
        if left := max(tails[2 * i], tails[2 * i + 1]):
            notes.append(f"{run.label}: {left} question(s) not found in the run's prompt source, "
                         f"scored on their last {QUESTION_TAIL} characters")  # fmt: skip
        if unmatched := max(chats[2 * i], chats[2 * i + 1]):
            notes.append(f"{run.label}: {unmatched} question(s) shared by chat prompts with different "
                         "system messages, saved without their messages by an older run: scored as hh "
                         "text, without a system message")  # fmt: skip
    return out, notes


def _stored_gold(runs: Sequence[PolicyRun]) -> tuple[dict[str, Any] | None, list[GoldReading]]:
    """The one gold every run was judged by (or none at all) and each run's reading of it."""
    golds = {run.label: run.summary.get("gold_model") or None for run in runs}
    identities = {label: _identity(g) for label, g in golds.items()}
    if len(set(identities.values())) > 1:
        named = "; ".join(
            f"{label}: {' '.join(map(str, i)) if i else 'no gold'}" for label, i in identities.items()
        )
        raise CompareError(f"the runs were judged by different golds ({named}); "
                           "pass --gold-bundle DIR to re-score them all with one")  # fmt: skip
    first = golds[runs[0].label]
    if first is None:
        nan = GoldReading(math.nan, math.nan, math.nan, math.nan)
        return None, [nan for _ in runs]
    score = first.get("score") or {}
    info = {
        "name": first.get("name"),
        "version": first.get("version"),
        "sha256": first.get("sha256"),
        "source": "as stored in the runs",
        "score_mean": _number(score.get("mean")),
        "score_std": _number(score.get("std")),
    }
    readings = [
        GoldReading(
            run.before.gold_mean_normalized,
            run.after.gold_mean_normalized,
            _number(run.summary.get("gold_gain_in_std")),
            _number(run.summary.get("gold_gain_se_in_std")),
        )
        for run in runs
    ]
    return info, readings


def _row(run: PolicyRun, gold: GoldReading, has_gold: bool) -> RunRow:
    summary, config = run.summary, run.config
    model = summary.get("reward_model") or {}
    gains = {
        "gain_in_std": _number(summary.get("gain_in_std")),
        "gain_se_in_std": _number(summary.get("gain_se_in_std")),
        "gold_gain_in_std": gold.gain,
        "gold_gain_se_in_std": gold.gain_se,
    }
    start, end = run.before.median_length, run.after.median_length
    within = abs(end / start - 1.0) <= LENGTH_TOLERANCE if start > 0 and math.isfinite(end) else None
    penalty = _number(config.get("uncertainty_penalty"))
    optimised = f"{config.get('reward_key', 'normalized')} score"
    if penalty > 0:
        optimised += f" − {penalty:g}·uncertainty"
    steps = summary.get("steps")
    return RunRow(
        label=run.label,
        path=str(run.path),
        proxy=f"{model.get('name', '?')} {model.get('version', '?')}",
        optimised=optimised,
        steps=int(steps) if isinstance(steps, int) else None,
        proxy_gain=gains["gain_in_std"],
        proxy_gain_se=gains["gain_se_in_std"],
        gold=gold,
        median_length=(start, end),
        mean_length=(run.before.mean_length, run.after.mean_length),
        length_within=within,
        kl_last=_number(summary.get("kl_last")),
        sorry_share=(refusal_share(run.before_samples), refusal_share(run.after_samples)),
        repetition_share=(repetition_share(run.before_samples), repetition_share(run.after_samples)),
        verdict=verdict(gains)
        if has_gold
        else "no gold reward: the proxy alone cannot show over-optimisation",
    )


def refusal_share(samples: Sequence[Sample]) -> float:
    """Share of answers saying REFUSAL, with a typographic apostrophe ("I’m sorry") counted too."""
    straight = [dataclasses.replace(s, answer=s.answer.replace("’", "'")) for s in samples]
    return phrase_share(straight, REFUSAL)


def _identity(gold: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if gold is None else (gold.get("name"), gold.get("version"), gold.get("sha256"))


def _number(value: Any) -> float:
    """A JSON number as float; NaN for null, a missing key or anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
