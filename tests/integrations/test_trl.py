"""TRL: our reward functions through TRL's own `GRPOTrainer._calculate_rewards`, against a real service.

TRL is installed (the `bench` extra; checked with 1.16). The method is TRL's, unmodified, called on a
small stand-in for the trainer object that holds only what the method reads (accelerator device,
reward functions and their names, trainer state, its logging hooks, and the daemon event loop TRL
starts for async reward functions, made by TRL's own `start_event_loop_in_daemon`): building a real
GRPOTrainer needs a policy model, which the reward path never touches.
"""

from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from trl import GRPOTrainer

from integrations.trl_reward import AsyncServiceRewardFunction, ServiceRewardFunction
from service.app import create_app
from tests.integrations.conftest import SCORE_MEAN, SCORE_STD, TOLERANCE, scores_of
from tests.service.conftest import LiveServer, dead_url, settings_for, slow_factory

PROMPTS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    "<|im_start|>user\nIs it safe to swim after eating?<|im_end|>\n<|im_start|>assistant\n",
    "\n\nHuman: Name a colour.\n\nAssistant:",
]
COMPLETIONS = [[{"role": "assistant", "content": "Mix flour and water."}], "Yes, mostly.<|im_end|>", " Blue."]
# what the reward model must be asked for those three (integrations.convert)
PAIRS = [
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour and water."),
    ("\n\nHuman: Is it safe to swim after eating?\n\nAssistant:", " Yes, mostly."),
    ("\n\nHuman: Name a colour.\n\nAssistant:", " Blue."),
]


def trainer_with(funcs: list[Any], loop: asyncio.AbstractEventLoop, metrics: dict[str, float]) -> Any:
    """What `_calculate_rewards` reads of `self`, and nothing else."""
    return SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=SimpleNamespace(report_to=[]),
        state=SimpleNamespace(global_step=3),
        reward_funcs=funcs,
        reward_processing_classes=[None] * len(funcs),
        reward_func_names=[f.__name__ for f in funcs],
        environments=None,
        async_loop=loop,
        _log_completion_extra=lambda column, values: None,
        _log_metric=lambda name, value: metrics.__setitem__(name, value),
    )


def calculate_rewards(trainer: Any, prompts: list[Any], completions: list[Any]) -> torch.Tensor:
    inputs = [
        {"prompt": p, "completion": c, "ground_truth": "x"} for p, c in zip(prompts, completions, strict=True)
    ]
    completion_ids = [[1, 2, 3]] * len(prompts)
    return GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, completion_ids)


def test_async_and_sync_functions_give_the_score_of_the_converted_pairs(
    service: LiveServer, trl_loop: Any
) -> None:
    expected = scores_of(service.url, PAIRS)
    async_raw = AsyncServiceRewardFunction(service.url, name="rm_async", chunk_size=1, max_concurrency=4)
    async_norm = AsyncServiceRewardFunction(service.url, name="rm_norm", normalized=True)
    sync_raw = ServiceRewardFunction(service.url, name="rm_sync")
    metrics: dict[str, float] = {}
    try:
        rewards = calculate_rewards(
            trainer_with([async_raw, async_norm, sync_raw], trl_loop, metrics), PROMPTS, COMPLETIONS
        )
    finally:
        sync_raw.close()
    assert rewards.shape == (3, 3)
    assert rewards[:, 0].tolist() == pytest.approx(expected, abs=TOLERANCE)
    assert rewards[:, 1].tolist() == pytest.approx(
        [(s - SCORE_MEAN) / SCORE_STD for s in expected], abs=TOLERANCE
    )
    assert rewards[:, 2].tolist() == pytest.approx(expected, abs=TOLERANCE)
    assert async_raw.model_version == sync_raw.model_version == "7"
    assert metrics["rm_async/failed"] == 0 and metrics["rm_sync/truncated"] == 0


def test_a_failed_reward_becomes_trls_nan_never_zero(trl_loop: Any) -> None:
    dead = dead_url()
    funcs = [
        AsyncServiceRewardFunction(dead, name="dead_async", max_retries=0, timeout=2.0),
        ServiceRewardFunction(dead, name="dead_sync", max_retries=0, timeout=2.0),
    ]
    metrics: dict[str, float] = {}
    rewards = calculate_rewards(trainer_with(funcs, trl_loop, metrics), PROMPTS[:2], COMPLETIONS[:2])
    assert all(
        math.isnan(r) for r in rewards.flatten().tolist()
    )  # TRL: None -> NaN, masked in the group stats
    assert metrics["dead_async/failed"] == 2


class InFlight:
    """ASGI wrapper counting the /score requests being served at once."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.now, self.peak, self.lock = app, 0, 0, threading.Lock()
        self.state = app.state  # what the production server reads of its app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = scope["type"] == "http" and scope["path"] == "/score"
        if counted:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                with self.lock:
                    self.now -= 1


def test_trls_gather_overlaps_the_async_functions_requests(tmp_path: Any, trl_loop: Any) -> None:
    """Two async functions, one completion per request: with a slow model every request is in flight
    at once only if neither function waits for its own or the other's requests one after another."""
    from tests.bundle_factory import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "rm")
    app = create_app(settings_for(bundle), backend_factory=slow_factory(0.3))
    counter = InFlight(app)
    with LiveServer(counter, settings=app.state.service.settings) as server:  # type: ignore[arg-type]
        funcs = [
            AsyncServiceRewardFunction(server.url, name=f"rm{i}", chunk_size=1, max_concurrency=8)
            for i in range(2)
        ]
        rewards = calculate_rewards(trainer_with(funcs, trl_loop, {}), PROMPTS, COMPLETIONS)
    assert not torch.isnan(rewards).any()
    assert counter.peak == 6, f"at most {counter.peak} of the 6 requests were in flight together"
