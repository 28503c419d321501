"""Fixtures of the trainer-integration tests: one real service on a tiny bundle, and its /score as the
reference every trainer's reward must equal.

The server is the production one (`service.server`, real uvicorn on a loopback socket, see
tests/service/conftest.py); the bundle has a non-trivial score mean/std so raw, normalised and [0, 1]
rewards are told apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import httpx
import pytest

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for

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


def scores_of(url: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The service's own /score of ``pairs``: the reference a trainer's rewards must equal."""
    body = {"pairs": [{"question": q, "answer": a} for q, a in pairs]}
    response = httpx.post(f"{url}/score", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return [float(s) for s in response.json()["scores"]]


def unit(score: float) -> float:
    """The [0, 1] reward the service documents for a raw score: sigmoid((score - mean) / std)."""
    return 1.0 / (1.0 + math.exp(-(score - SCORE_MEAN) / SCORE_STD))
