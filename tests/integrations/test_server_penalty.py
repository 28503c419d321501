"""``?uncertainty_penalty=λ`` in the trainers' own URL flags: OpenRLHF's released executor given
``--reward.remote_url http://.../get_reward?uncertainty_penalty=λ`` and slime's ``remote_rm`` request
posted to ``--rm-url http://.../slime/reward?uncertainty_penalty=λ`` get score − λ·uncertainty, with
nothing on the trainer's side to post-process it (service/trainer_penalty.py).

The reference is the service's own ``/score`` of the same pair, on a bundle with four quality heads.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import numpy as np
import pytest

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.integrations.released import load_released, released_package
from tests.integrations.test_openrlhf import HH_PROMPT, VERSION, _no_wait, run
from tests.integrations.test_slime import post_like_slime
from tests.service.conftest import LiveServer, penalised_reference, settings_for

LAMBDA = 0.7
TOLERANCE = 1e-4


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """OpenRLHF's released ``openrlhf/utils/agent.py`` (tests/integrations/test_openrlhf.py)."""
    return load_released(released_package("openrlhf", VERSION), "openrlhf.utils.agent", monkeypatch)


def reference(url: str, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    penalised, direct = penalised_reference(url, pairs, LAMBDA)
    return {"penalised": penalised, "normalized": np.asarray(direct["normalized"])}


def test_openrlhfs_executor_with_the_penalty_in_its_remote_url(
    ensemble_live: LiveServer,
    agent: types.ModuleType,
) -> None:
    url = f"{ensemble_live.url}/get_reward?uncertainty_penalty={LAMBDA}"
    output = run(agent, url, HH_PROMPT, " Mix flour and water.")
    expected = reference(ensemble_live.url, [(HH_PROMPT, " Mix flour and water.")])
    assert output["reward"] == pytest.approx(expected["penalised"].tolist(), abs=TOLERANCE)
    # scores (dynamic filtering) stay the model's own verdict: the unpenalised calibration
    unit = 1 / (1 + np.exp(-expected["normalized"]))
    assert output["scores"] == pytest.approx(unit.tolist(), abs=TOLERANCE)


def test_openrlhfs_executor_gets_no_reward_when_the_bundle_cannot_penalise(
    agent: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """A 422 (one quality head) is a failed call to OpenRLHF: its own None after its tries, never the
    plain score in place of the penalised one."""
    _no_wait(agent, monkeypatch)
    bundle = make_tiny_bundle(tmp_path / "plain")
    with LiveServer(create_app(settings_for(bundle))) as plain:
        output = run(agent, f"{plain.url}/get_reward?uncertainty_penalty={LAMBDA}", HH_PROMPT, " Mix.")
    assert output["reward"] is None and output["scores"] is None


def test_slimes_request_to_an_rm_url_with_the_penalty(ensemble_live: LiveServer) -> None:
    samples: list[dict[str, Any]] = [
        {"prompt": HH_PROMPT, "response": " Mix flour and water.", "label": None},
        {"prompt": HH_PROMPT, "response": " Bake it.", "label": "x"},
    ]
    rewards = asyncio.run(
        post_like_slime(f"{ensemble_live.url}/slime/reward?uncertainty_penalty={LAMBDA}", samples)
    )
    expected = reference(ensemble_live.url, [(s["prompt"], s["response"]) for s in samples])
    assert all(type(r) is float for r in rewards)
    assert rewards == pytest.approx(expected["penalised"].tolist(), abs=TOLERANCE)
