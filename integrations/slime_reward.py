"""The scoring service as slime's custom reward function.

    RLHF_SERVICE_URL=http://rm-0:8000,http://rm-1:8000 python train.py ... \\
        --custom-rm-path integrations.slime_reward.reward

slime can post to the service itself (``--rm-type remote_rm --rm-url http://host:8000/...``, see the
service's docs for the route). ``--custom-rm-path`` instead imports a coroutine function and awaits it
as ``reward(args, sample)`` for one sample, or ``reward(args, samples)`` for a list when it scores a
group at once (``slime/rollout/rm_hub/__init__.py``: ``async_rm`` and ``batched_async_rm``). This one
converts each sample's ``prompt`` (a string, templated or not, or chat messages) and ``response`` with
`integrations.convert` into the input the served bundle reads (an hh pair, or for a `chat` bundle the
conversation, system message included: `integrations.served_format`) and sends them through the async
client: a bearer token, backoff that honours Retry-After, failover across replicas, and a group scored
in one request.

The URLs are ``RLHF_SERVICE_URL``'s, else slime's own ``--rm-url`` (``args.rm_url``, comma-separated
for replicas). The reward is the raw score, or the normalised one with ``RLHF_REWARD=normalized``.
A sample the service cannot score after the retries raises `service.client.RewardUnavailable`, as
slime's own ``remote_rm`` raises after its retries: slime has no "no reward" value.

``RLHF_UNCERTAINTY_PENALTY=lambda`` makes the reward ``score - lambda * uncertainty`` (in the units of the
reward, raw or normalised); ``RLHF_LENGTH_DISENTANGLED=1`` refuses a served score that is not
length-disentangled. Both are `integrations.reward_options`, which also says how to serve the
length-disentangled score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from integrations.clients import SERVICE_URL_ENV, shared_async_client
from integrations.convert import InputFormat, Item, to_item
from integrations.reward_options import RewardOptions, finite
from integrations.served_format import score_as_served_async

REWARD_ENV = "RLHF_REWARD"  # raw (default) | normalized


async def reward(args: Any, samples: Any, **_: Any) -> float | list[float]:
    """One float for one sample, a list for a list (slime calls it both ways)."""
    batch = list(samples) if isinstance(samples, Sequence) else [samples]
    urls = os.environ.get(SERVICE_URL_ENV) or getattr(args, "rm_url", None)
    kind = os.environ.get(REWARD_ENV, "raw")
    if kind not in ("raw", "normalized"):
        raise ValueError(f"{REWARD_ENV}={kind!r}: use raw or normalized")
    options = RewardOptions.resolve(normalized=kind == "normalized")

    def items(input_format: InputFormat) -> list[Item]:
        return [to_item(s.prompt, s.response, input_format) for s in batch]

    result, model = await score_as_served_async(shared_async_client(urls), items, raise_on_failure=True)
    values = finite(options.rewards(result, model), result)
    return values if isinstance(samples, Sequence) else values[0]
