"""Counters of the reliability suite: what was tried, what was injected, what was sent, what was lost.

    def test_x(figures: Figures) -> None:
        scenario = figures.scenario("load/overload")
        scenario.sent += 1          # one HTTP request left the client
        scenario.lost += 1          # ...and got no complete, valid answer (never acceptable)

A request is *lost* when it got no complete answer it could act on: a 5xx, a reset or truncated
response, a 200 whose scores are not its own, or an in-flight request cut by a shutdown. A clear
refusal (4xx with a JSON error, 429 + Retry-After, 503 draining, connection refused after exit) is
not lost: the caller knows what happened and can retry. Every scenario asserts `lost == 0`; the totals
go to a JSON file (RLHF_RELIABILITY_SUMMARY, default runs/reliability-summary.json) and the terminal.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUMMARY_ENV = "RLHF_RELIABILITY_SUMMARY"
DEFAULT_SUMMARY = Path(__file__).resolve().parents[2] / "runs" / "reliability-summary.json"
FIELDS = ("inputs_tried", "faults_injected", "requests_sent", "requests_lost")


@dataclass
class Scenario:
    inputs: int = 0  # distinct inputs tried (fuzz cases, bad bodies, routes probed)
    faults: int = 0  # faults injected (broken bundles, signals, restarts, kills)
    sent: int = 0  # HTTP requests sent
    lost: int = 0  # requests without a complete answer they could act on (must stay 0)

    def assert_nothing_lost(self, name: str) -> None:
        assert self.lost == 0, f"{name}: {self.lost} of {self.sent} requests lost"


@dataclass
class Figures:
    scenarios: dict[str, Scenario] = field(default_factory=dict)

    def scenario(self, name: str) -> Scenario:
        return self.scenarios.setdefault(name, Scenario())

    def totals(self) -> dict[str, int]:
        parts = self.scenarios.values()
        return {
            "inputs_tried": sum(s.inputs for s in parts),
            "faults_injected": sum(s.faults for s in parts),
            "requests_sent": sum(s.sent for s in parts),
            "requests_lost": sum(s.lost for s in parts),
        }

    def to_json(self) -> dict[str, object]:
        return {
            "totals": self.totals(),
            "scenarios": {name: asdict(s) for name, s in sorted(self.scenarios.items())},
        }

    def write(self, path: Path | None = None) -> Path:
        target = path or Path(os.environ.get(SUMMARY_ENV, DEFAULT_SUMMARY))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return target


FIGURES = Figures()  # one per pytest session (the conftest fixture and terminal hook share it)
