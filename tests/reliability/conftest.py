"""Fixtures of the reliability suite. The tiny bundles and the in-thread server come from the service
tests (imported, not copied); the figures collected here are written to JSON and printed at the end.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability.figures import FIGURES, Figures
from tests.service.conftest import bundle_root, bundle_v1  # noqa: F401  (re-exported fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's counters (inputs tried, faults injected, requests sent, requests lost)."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.scenarios:
        return  # the suite did not run (e.g. -k selected other tests)
    path = FIGURES.write()
    terminalreporter.section("reliability figures")
    for name, value in FIGURES.totals().items():
        terminalreporter.write_line(f"{name:>16}: {value}")
    terminalreporter.write_line(f"per scenario: {path}")
