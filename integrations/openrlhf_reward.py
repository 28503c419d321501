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
parsed back into turns and sent as the hh text a `pair` bundle was trained on, or, to a `chat` bundle,
as the conversation itself (system message and contents as the policy saw them), which the reward
model's own chat template renders (`integrations.served_format`).

It returns what ``/get_reward`` returns, per query: ``rewards`` (raw scores), ``scores`` (the reward in
[0, 1], for dynamic filtering) and ``extra_logs`` (numbers only: OpenRLHF turns every value into a
tensor). A query the service cannot score after the retries raises `service.client.RewardUnavailable`;
OpenRLHF's executor catches it and leaves that sample's reward ``None``, its own "no reward".

OpenRLHF passes no options to a reward file, so they come from the environment: with
``RLHF_UNCERTAINTY_PENALTY=lambda`` the ``rewards`` are ``score - lambda * uncertainty`` (raw units) and
``extra_logs`` adds ``rm_uncertainty``; ``scores`` stay the reward model's own verdict in [0, 1] (what
dynamic filtering judges a prompt by). ``RLHF_LENGTH_DISENTANGLED=1`` refuses a served score that is not
length-disentangled. Both are `integrations.reward_options`, which also says how to serve the
length-disentangled score. (Plain HTTP penalises on the server instead:
``--reward.remote_url 'http://host:8000/get_reward?uncertainty_penalty=0.5'``, docs/openrlhf.md.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from integrations.clients import shared_client
from integrations.convert import InputFormat, Item, split_query_item
from integrations.reward_options import RewardOptions, finite
from integrations.served_format import score_as_served


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
    options = RewardOptions.resolve()  # raw rewards; the penalty and the length guard from the environment
    samples = list(zip(queries, prompts, strict=True))

    def items(input_format: InputFormat) -> list[Item]:
        return [split_query_item(q, p, input_format) for q, p in samples]

    result, model = score_as_served(shared_client(), items, raise_on_failure=True)
    rewards = finite(options.rewards(result, model), result)
    logs = {"rm_truncated": result.truncated.astype(np.float64).tolist()}
    if options.uncertainty_penalty > 0 and result.uncertainty is not None:  # finite: rewards() checked
        logs["rm_uncertainty"] = result.uncertainty.tolist()
    return {"rewards": rewards, "scores": unit_interval(result.normalized).tolist(), "extra_logs": logs}
