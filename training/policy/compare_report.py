"""A `Comparison` for a reader: the table, held-out answers side by side, curves, and the files.

    print("\\n".join(table_lines(comparison)))                 # markdown, columns padded for a terminal
    paths = write_outputs(comparison, Path("runs/compare"), samples=3)   # compare.json, .md, .png

The table has one column per run and one row per question a reader asks of it (what did it optimise,
did the gold agree, what happened to the answers), so it pastes into a README as is. The answers
are the first sample of the same held-out prompts in every run: one "before" line when the runs
started from the same answers, then each run's "after", with their scores in std units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.policy.compare import LENGTH_TOLERANCE, REFUSAL, Comparison, PolicyRun, RunRow
from training.policy.report import Sample, last_question, one_line
from training.policy.rescore import QUESTION_TAIL

CURVES = (  # (metrics.jsonl key, panel title) of the PNG, one line per run
    ("proxy_mean", "proxy (each run's own RM std)"),
    ("gold_mean", "gold as logged by each run (its std)"),
    ("answer_length", "answer tokens"),
    ("kl", "KL to the reference"),
)


SMOOTH = 5  # steps in the trailing mean drawn over each curve: a step's mean of a few answers is noisy


@dataclass(frozen=True)
class Answers:
    """One held-out prompt: the first sampled answer of every run, before and after."""

    question: str  # the last human turn
    before: dict[str, Sample]  # run label -> sample
    after: dict[str, Sample]


def table_cells(row: RunRow) -> list[tuple[str, str]]:
    """(row label, cell) pairs of one run's column."""
    gold = row.gold
    start, end = row.median_length
    change = f" ({end / start - 1:+.0%})" if start > 0 and math.isfinite(end) else ""
    within = {True: "yes", False: "no", None: "n/a"}[row.length_within]
    return [
        ("proxy optimised", f"{row.proxy}: {row.optimised}"),
        ("steps", "n/a" if row.steps is None else str(row.steps)),
        ("proxy gain (its std)", _gain(row.proxy_gain, row.proxy_gain_se)),
        ("gold before → after (gold std)", f"{_signed(gold.before)} → {_signed(gold.after)}"),
        ("gold gain (gold std)", _gain(gold.gain, gold.gain_se)),
        ("median answer tokens", f"{_plain(start, 0)} → {_plain(end, 0)}{change}"),
        (f"median within {LENGTH_TOLERANCE:.0%} of start", within),
        ("mean answer tokens", f"{_plain(row.mean_length[0], 1)} → {_plain(row.mean_length[1], 1)}"),
        ("KL at the end (nats/answer)", _plain(row.kl_last, 2)),
        (f'answers with "{REFUSAL}"', f"{_share(row.sorry_share[0])} → {_share(row.sorry_share[1])}"),
        (
            "answers repeating a phrase",
            f"{_share(row.repetition_share[0])} → {_share(row.repetition_share[1])}",
        ),
        ("verdict", row.verdict),
    ]


def table_lines(comparison: Comparison) -> list[str]:
    """A markdown table, runs as columns, cells padded so it also reads in a terminal."""
    columns = [table_cells(row) for row in comparison.rows]
    header = ["", *(row.label for row in comparison.rows)]
    body = [[label, *(col[i][1] for col in columns)] for i, (label, _) in enumerate(columns[0])]
    cells = [[_escape(c) for c in line] for line in (header, *body)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def gold_line(comparison: Comparison) -> str:
    """What the gold columns are measured with."""
    gold = comparison.gold
    if gold is None:
        return "Gold: none (the runs have no gold and no --gold-bundle was given)."
    return (f"Gold: {gold['name']} {gold['version']}, {gold['source']}; gains in std of each model's train "
            "scores, ± the standard error paired over held-out prompts.")  # fmt: skip


def common_answers(runs: Sequence[PolicyRun], count: int) -> list[Answers]:
    """The first ``count`` held-out prompts every run evaluated before and after (matched by question)."""
    firsts = [(_first(run.before_samples), _first(run.after_samples)) for run in runs]
    shown: list[Answers] = []
    for key, sample in firsts[0][0].items():
        if len(shown) == count:
            break
        if all(key in before and key in after for before, after in firsts):
            shown.append(
                Answers(
                    last_question(sample.question),
                    {run.label: b[key] for run, (b, _) in zip(runs, firsts, strict=True)},
                    {run.label: a[key] for run, (_, a) in zip(runs, firsts, strict=True)},
                )
            )
    return shown


def answer_lines(comparison: Comparison, count: int, width: int = 110) -> list[str]:
    """Per prompt: the question, the answer(s) before, each run's answer after; scores in std units."""
    answers = common_answers(comparison.runs, count)
    if count and not answers:
        return ["(no held-out prompt was evaluated by every run)"]
    labels = [run.label for run in comparison.runs]
    pad = max(len(f"after {label}") for label in labels)
    lines = []
    for number, item in enumerate(answers, start=1):
        lines.append(one_line(f"{number}. {item.question}", width))
        befores = list(item.before.values())
        if all(s.answer == befores[0].answer for s in befores):
            lines.append(_answer_line("before".ljust(pad), befores[0], None, comparison, width))
        else:
            lines += [
                _answer_line(f"before {lb}".ljust(pad), item.before[lb], lb, comparison, width)
                for lb in labels
            ]
        lines += [
            _answer_line(f"after {lb}".ljust(pad), item.after[lb], lb, comparison, width) for lb in labels
        ]
    return lines


def to_markdown(comparison: Comparison, count: int, png_name: str | None = None) -> str:
    """The table, the gold line, notes, the answers in a text block and the curves: ready for a README."""
    parts = ["## Policy runs side by side", "", *table_lines(comparison), "", gold_line(comparison)]
    parts += [f"Note: {note}." for note in comparison.notes]
    if count:
        parts += [
            "",
            "Held-out answers (first sample, same prompts before and after; [proxy, gold] in std units):",
        ]
        parts += ["", "```text", *answer_lines(comparison, count), "```"]
    if png_name:
        parts += ["", f"![proxy and gold per step]({png_name})"]
    return "\n".join(parts) + "\n"


def to_json(comparison: Comparison, count: int) -> dict[str, Any]:
    """compare.json: the gold, one object per run, the answers shown, the notes."""
    return {
        "gold": comparison.gold,
        "runs": [row.to_dict() for row in comparison.rows],
        "answers": [
            {
                "question": item.question,
                "before": {lb: _sample_json(s, lb, comparison) for lb, s in item.before.items()},
                "after": {lb: _sample_json(s, lb, comparison) for lb, s in item.after.items()},
            }
            for item in common_answers(comparison.runs, count)
        ],
        "notes": comparison.notes,
    }


def plot_comparison(comparison: Comparison, out_path: Path) -> Path:
    """Per-step curves of every run from its metrics.jsonl (Agg backend); an empty panel says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), squeeze=False)
    for ax, (key, title) in zip(axes.flat, CURVES, strict=True):
        drawn = 0
        for run in comparison.runs:
            points = [
                (r["step"], r[key])
                for r in run.metrics
                if _plottable(r.get("step")) and _plottable(r.get(key))
            ]
            if points:
                steps, values = zip(*points, strict=True)
                (faint,) = ax.plot(steps, values, linewidth=0.8, alpha=0.35)
                ax.plot(steps, _trailing_mean(values, SMOOTH), color=faint.get_color(), linewidth=1.6,
                        label=_curve_label(run, key))  # fmt: skip
                drawn += 1
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"policy runs side by side (faint: per step; solid: trailing mean of {SMOOTH} steps)")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_outputs(comparison: Comparison, out_dir: Path, count: int) -> list[Path]:
    """compare.json, compare.md and compare.png in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(comparison, out_dir / "compare.png")
    md = out_dir / "compare.md"
    md.write_text(to_markdown(comparison, count, png.name), encoding="utf-8")
    js = out_dir / "compare.json"
    js.write_text(json.dumps(to_json(comparison, count), indent=2) + "\n", encoding="utf-8")
    return [js, md, png]


def _first(samples: Sequence[Sample]) -> dict[str, Sample]:
    """The first sample of each question, keyed by the stored tail (full and cut questions match)."""
    first: dict[str, Sample] = {}
    for sample in samples:
        first.setdefault(sample.question[-QUESTION_TAIL:], sample)
    return first


def _scores(sample: Sample, label: str | None, comparison: Comparison) -> dict[str, float | None]:
    """The sample's proxy (its run's RM; only with a run ``label``) and gold score in std units."""
    out: dict[str, float | None] = {}
    if label is not None:
        mean, std = _proxy_scale(next(r for r in comparison.runs if r.label == label))
        out["proxy"] = _scaled(sample.score, mean, std)
    gold = comparison.gold
    if gold is not None:
        out["gold"] = _scaled(sample.gold_score, gold["score_mean"], gold["score_std"])
    return out


def _proxy_scale(run: PolicyRun) -> tuple[float, float]:
    """The proxy's train (mean, std): the std from the summary, the mean from the normalised eval mean."""
    std = (run.summary.get("reward_model") or {}).get("score_std")
    if not isinstance(std, int | float):
        return math.nan, math.nan
    return run.before.mean_raw - run.before.mean_normalized * float(std), float(std)


def _answer_line(label: str, sample: Sample, run: str | None, comparison: Comparison, width: int) -> str:
    parts = [
        f"{name} {value:+.1f}"
        for name, value in _scores(sample, run, comparison).items()
        if value is not None
    ]
    tag = f"  [{', '.join(parts)}]" if parts else ""
    prefix = f"   {label}  "
    return prefix + one_line(sample.answer, width - len(prefix) - len(tag)) + tag


def _sample_json(sample: Sample, label: str, comparison: Comparison) -> dict[str, Any]:
    return {"answer": sample.answer, **_scores(sample, label, comparison)}


def _scaled(value: float | None, mean: float, std: float) -> float | None:
    if value is None or not (math.isfinite(value) and math.isfinite(mean) and math.isfinite(std) and std > 0):
        return None
    return (value - mean) / std


def _trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def _curve_label(run: PolicyRun, key: str) -> str:
    """The run's label; on the gold panel also the gold it logged (runs may have logged different ones)."""
    gold = run.summary.get("gold_model") or {}
    return (
        f"{run.label} ({gold.get('name')} {gold.get('version')})"
        if key == "gold_mean" and gold
        else run.label
    )


def _plottable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _gain(value: float, se: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{_signed(value)} ± {se:.2f}" if math.isfinite(se) else f"{_signed(value)} ± n/a"


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def _plain(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _share(value: float) -> str:
    return f"{value:.0%}" if math.isfinite(value) else "n/a"


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")
