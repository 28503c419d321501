"""Python client of the scoring service, sync and async, on httpx.

    with RewardClient(["http://rm-0:8000", "http://rm-1:8000"], api_key="s3cret") as client:
        result = client.score([("How do I bake bread?", "Mix flour, water, yeast...")])
        result.scores          # float64 [n], NaN where an item could not be scored (never 0)
        result.model_changed   # True once the service answered with another model version
        result.uncertainty     # float64 [n], the spread of the bundle's ensemble; NaN without one

Long lists are cut into chunks of `chunk_size`, sent `max_concurrency` at a time, round-robin over the
base URLs. Only transient failures are retried (timeouts, connection errors, 429, 502, 503, 504), with
jittered exponential backoff that honours Retry-After; a connection error or 503 moves the chunk to the
next URL. Other 4xx mean the caller sent something wrong and raise :class:`RequestRejected` at once,
and the call's other chunks stop retrying.

Error tree::

    RewardClientError
     ├── RewardUnavailable   gave up after retries (only with raise_on_failure=True, and models())
     └── RequestRejected     401 / 413 / 422 / other 4xx: a caller bug, never retried, never masked

Layout: `_core` holds everything both faces share (chunking, the one send loop, assembling results);
`_sync` and `_async` only drive that loop with blocking or asyncio I/O.
"""

from service.client._async import AsyncRewardClient
from service.client._core import MOVE_STATUS, RETRY_STATUS, ScoreItem, ScoreResult
from service.client._errors import RequestRejected, RewardClientError, RewardUnavailable
from service.client._sync import RewardClient

__all__ = [
    "MOVE_STATUS",
    "RETRY_STATUS",
    "AsyncRewardClient",
    "RequestRejected",
    "RewardClient",
    "RewardClientError",
    "RewardUnavailable",
    "ScoreItem",
    "ScoreResult",
]
