"""Fixtures of the trainer-integration tests: one real service on a tiny bundle, its /score as the
reference every trainer's reward must equal, and the event loop TRL runs async reward functions on.

The server is the production one (`service.server`, real uvicorn on a loopback socket, see
tests/service/conftest.py); the bundle has a non-trivial score mean/std so raw, normalised and [0, 1]
rewards are told apart.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator, Sequence

import pytest

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import (
    LiveServer,
    ensemble_live,  # noqa: F401  (re-exported fixture)
    score_of,
    settings_for,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCORE_MEAN, SCORE_STD = 1.0, 2.0
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("integrations") / "rm",
        version="7",
        score_mean=SCORE_MEAN,
        score_std=SCORE_STD,
    )
    with LiveServer(create_app(settings_for(bundle))) as server:
        yield server


@pytest.fixture(scope="module")
def trl_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The loop `GRPOTrainer` starts for async reward functions, made by TRL's own helper."""
    from trl.trainer.grpo_trainer import start_event_loop_in_daemon

    thread, loop, ready = start_event_loop_in_daemon(name="trl-test-loop")
    ready.wait()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def scores_of(url: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The service's own /score of ``pairs``: the reference a trainer's rewards must equal."""
    return [float(s) for s in score_of(url, pairs)["scores"]]


def unit(score: float) -> float:
    """The [0, 1] reward the service documents for a raw score: sigmoid((score - mean) / std)."""
    return 1.0 / (1.0 + math.exp(-(score - SCORE_MEAN) / SCORE_STD))
