"""The scoring service as OpenRLHF's reward function file, for when plain HTTP is not enough.

    RLHF_SERVICE_URL=http://rm-0:8000,http://rm-1:8000 RLHF_API_KEY=s3cret \\
    python -m openrlhf.cli.train_ppo_ray --reward.remote_url "$(python -c \\
        'import integrations.openrlhf_reward as m; print(m.__file__)')" ...

OpenRLHF can post to the service itself (``--reward.remote_url http://host:8000/get_reward``, see
docs/openrlhf.md). Its HTTP call sends no Authorization header, retries any failure 5 times one second
apart, and rotates over the URLs without noticing which one is down. Given a ``.py`` path instead,
OpenRLHF (``openrlhf/utils/agent.py``, checked against 0.11.2) imports the file and calls its
``reward_func(queries, prompts, labels)`` in a thread, one sample per call, many at once; this one
sends them through `service.client` (bearer token, backoff that honours Retry-After, failover across
replicas) after converting each (prompt, query) with `integrations.convert`: chat-templated text is
parsed back into turns and sent as the hh text the reward model was trained on.

It returns what ``/get_reward`` returns, per query: ``rewards`` (raw scores), ``scores`` (the reward in
[0, 1], for dynamic filtering) and ``extra_logs`` (numbers only: OpenRLHF turns every value into a
tensor). A query the service cannot score after the retries raises `service.client.RewardUnavailable`;
OpenRLHF's executor catches it and leaves that sample's reward ``None``, its own "no reward".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from integrations.clients import shared_client
from integrations.convert import split_query


def unit_interval(normalized: np.ndarray) -> np.ndarray:
    """The reward in [0, 1] from the normalised score, as ``/get_reward``'s ``scores``
    (`service.model.Model.calibrated`: a sigmoid, written with tanh so it never overflows)."""
    return 0.5 * (1.0 + np.tanh(normalized / 2.0))


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None
) -> dict[str, Any]:
    """OpenRLHF's reward-function contract: ``queries[i]`` is ``prompts[i]`` + the response."""
    if len(queries) != len(prompts):
        raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
    pairs = [split_query(q, p) for q, p in zip(queries, prompts, strict=True)]
    result = shared_client().score(pairs, raise_on_failure=True)
    return {
        "rewards": result.scores.tolist(),
        "scores": unit_interval(result.normalized).tolist(),
        "extra_logs": {"rm_truncated": result.truncated.astype(np.float64).tolist()},
    }
