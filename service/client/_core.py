"""What the sync and async clients share: chunking, the one send loop, and assembling the scores.

The send loop (retries, backoff, moving to the next URL, stopping when aborted) is written once, in
:meth:`ClientCore._attempts`, as a generator that does no I/O: it yields what to do next (a
:class:`Send` or a :class:`Sleep`) and is sent what happened (the response, or the transport error).
Each face drives it with its own I/O (``httpx.Client`` + ``time.sleep`` or ``httpx.AsyncClient`` +
``asyncio.sleep``), so both retry and give up in exactly the same way.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from service.client._errors import RequestRejected, RewardUnavailable, error_of, retry_after_of

RETRY_STATUS = frozenset({429, 502, 503, 504})
MOVE_STATUS = frozenset({503})  # a draining/unready replica: try the next URL


# what `score` sends: a (question, answer) pair, or an item as POST /score takes it ({"messages": [...]})
ScoreItem = tuple[str, str] | Mapping[str, Any]


def _item(item: ScoreItem) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    question, answer = item
    return {"question": question, "answer": answer}


@dataclass
class ScoreResult:
    scores: np.ndarray  # float64 [n]; NaN where the item could not be scored (never 0)
    normalized: np.ndarray  # float64 [n]; NaN likewise
    truncated: np.ndarray  # bool [n]
    model_version: str | None  # version that scored the batch (None if nothing was scored)
    model_name: str | None
    failed: int  # items that are NaN
    errors: list[str] = field(default_factory=list)  # one message per failed chunk
    model_changed: bool = False  # True if the version differs from the first version this client saw
    # float64 [n], raw score units: the spread of the bundle's ensemble; NaN where the item failed or
    # the bundle has no ensemble (None only in results built by hand)
    uncertainty: np.ndarray | None = None


@dataclass(frozen=True)
class Chunk:
    """Items ``start .. start + size - 1`` of one call, sent as one request to ``url_index`` first."""

    start: int
    size: int
    payload: dict[str, Any]
    url_index: int


@dataclass(frozen=True)
class Outcome:
    """What one request ended with: the JSON body, or why there is none."""

    body: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Send:
    method: str
    url: str
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Sleep:
    seconds: float


Reply = httpx.Response | httpx.TransportError | None  # what the driver sends back (None after a Sleep)
# where each route's body holds the scores and the uncertainties (/get_reward speaks OpenRLHF's protocol:
# its `scores` are the reward in [0, 1], its raw scores are `rewards`)
SCORES_KEY = {"/score": "scores", "/get_reward": "rewards"}
Plan = Generator[Send | Sleep, Reply, Outcome]
Verdict = Literal["ok", "retry", "move", "fail"]


class AbortFlag:
    """Set once with a reason; every send loop reading it stops before its next attempt.

    One per call (a rejected chunk stops its siblings, not other calls) whose parent is the client's
    own flag (closing the client stops every call). A plain attribute: safe to read from threads.
    """

    def __init__(self, parent: AbortFlag | None = None) -> None:
        self._reason: str | None = None
        self._parent = parent

    def set(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def reason(self) -> str | None:
        if self._reason is not None:
            return self._reason
        return self._parent.reason if self._parent is not None else None


def _uncertainty_of(path: str, body: dict[str, Any]) -> Any:
    """The per-item uncertainties of a body, or None when the bundle has no ensemble."""
    if path == "/get_reward":
        return body.get("extra_logs", {}).get("rm_uncertainty")
    return body.get("uncertainty")


def _parsed(url: str, response: httpx.Response) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        return Outcome(error=f"{url}: HTTP 200 with a body that is not JSON")
    if not isinstance(body, dict):
        return Outcome(error=f"{url}: HTTP 200 with a JSON {type(body).__name__}, expected an object")
    return Outcome(body=body)


class ClientCore:
    """Constructor checks, URL rotation, backoff, chunking, the send loop and result assembly."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        chunk_size: int = 64,
        max_concurrency: int = 4,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls must name at least one service URL")
        if chunk_size < 1 or max_concurrency < 1 or max_retries < 0:
            raise ValueError("chunk_size and max_concurrency must be >= 1, max_retries >= 0")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.first_version: str | None = None
        self._round_robin = itertools.count()
        self._rr_lock = threading.Lock()
        self._closed = AbortFlag()  # set by close(): in-flight calls stop retrying

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=self.max_concurrency * len(self.base_urls) + 2)

    def _next_url_index(self) -> int:
        with self._rr_lock:
            return next(self._round_robin)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Jittered exponential backoff; never shorter than the server's Retry-After (capped)."""
        expo = min(self.backoff_max, self.backoff_base * 2**attempt)
        jittered = random.uniform(expo / 2, expo)
        return min(self.backoff_max, max(jittered, retry_after or 0.0))

    # ---- chunking ---------------------------------------------------------------------------------------
    def _chunks(self, items: int, make_payload: Callable[[int, int], dict[str, Any]]) -> list[Chunk]:
        return [
            Chunk(
                start,
                min(self.chunk_size, items - start),
                make_payload(start, start + self.chunk_size),
                self._next_url_index(),
            )
            for start in range(0, items, self.chunk_size)
        ]

    def _score_chunks(self, pairs: Sequence[ScoreItem]) -> list[Chunk]:
        def payload(a: int, b: int) -> dict[str, Any]:
            return {"pairs": [_item(item) for item in pairs[a:b]]}

        return self._chunks(len(pairs), payload)

    def _reward_chunks(self, queries: Sequence[str], prompts: Sequence[str]) -> list[Chunk]:
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")

        def payload(a: int, b: int) -> dict[str, Any]:
            return {"query": list(queries[a:b]), "prompts": list(prompts[a:b])}

        return self._chunks(len(queries), payload)

    # ---- the send loop ----------------------------------------------------------------------------------
    def _attempts(
        self, method: str, path: str, payload: dict[str, Any] | None, url_index: int, abort: AbortFlag
    ) -> Plan:
        """One request with retries: yields Send/Sleep steps, returns the Outcome; raises RequestRejected."""
        last = "not attempted"
        for attempt in range(self.max_retries + 1):
            if abort.reason is not None:
                return Outcome(error=f"aborted: {abort.reason}")
            url = self.base_urls[url_index % len(self.base_urls)]
            retry_after: float | None = None
            reply = yield Send(method, url + path, payload)
            if isinstance(reply, httpx.TimeoutException):
                last = f"{url}: timeout ({type(reply).__name__})"
            elif isinstance(reply, httpx.TransportError):
                last = f"{url}: connection error ({type(reply).__name__}: {reply})"
                url_index += 1
            elif reply is not None:
                verdict, retry_after, last = self._judge(url, reply)
                if verdict == "ok":
                    return _parsed(url, reply)
                if verdict == "fail":
                    return Outcome(error=last)
                if verdict == "move":
                    url_index += 1
            if attempt < self.max_retries:
                yield Sleep(self._delay(attempt, retry_after))
        return Outcome(error=f"gave up after {self.max_retries + 1} attempts; last: {last}")

    def _judge(self, url: str, response: httpx.Response) -> tuple[Verdict, float | None, str]:
        """(verdict, retry_after, message); raises RequestRejected for 4xx other than 429."""
        if response.status_code == 200:
            return "ok", None, ""
        kind, message = error_of(response)
        text = f"{url}: HTTP {response.status_code} {kind}: {message}"
        if response.status_code in RETRY_STATUS:
            verdict: Verdict = "move" if response.status_code in MOVE_STATUS else "retry"
            return verdict, retry_after_of(response), text
        if 400 <= response.status_code < 500:
            raise RequestRejected(response.status_code, kind, message)
        return "fail", None, text

    # ---- results ----------------------------------------------------------------------------------------
    def _assemble(self, path: str, n: int, done: Sequence[tuple[Chunk, Outcome]]) -> ScoreResult:
        scores = np.full(n, np.nan)
        normalized = np.full(n, np.nan)
        uncertainty = np.full(n, np.nan)
        truncated = np.zeros(n, dtype=bool)
        errors: list[str] = []
        versions: list[tuple[str, str]] = []
        for chunk, outcome in sorted(done, key=lambda d: d[0].start):
            rows = slice(chunk.start, chunk.start + chunk.size)
            if outcome.body is None:
                errors.append(f"items {rows.start}..{rows.stop - 1}: {outcome.error}")
                continue
            try:
                body = outcome.body
                got = np.asarray(body[SCORES_KEY[path]], dtype=np.float64)
                if got.shape != (chunk.size,):
                    raise ValueError(f"{got.shape[0] if got.ndim else 0} scores for {chunk.size} items")
                scores[rows] = got
                normalized[rows] = np.asarray(body["normalized"], dtype=np.float64)
                truncated[rows] = np.asarray(body["truncated"], dtype=bool)
                spread = _uncertainty_of(path, body)
                if spread is not None:
                    uncertainty[rows] = np.asarray(spread, dtype=np.float64)
                versions.append((str(body["model"]["name"]), str(body["model"]["version"])))
            except (KeyError, TypeError, ValueError) as exc:
                scores[rows] = np.nan
                normalized[rows] = np.nan
                uncertainty[rows] = np.nan
                errors.append(f"items {rows.start}..{rows.stop - 1}: malformed response ({exc})")
        if versions and self.first_version is None:
            self.first_version = versions[0][1]
        changed = any(version != self.first_version for _, version in versions)
        name, version = versions[-1] if versions else (None, None)
        failed = int(np.isnan(scores).sum())
        return ScoreResult(scores, normalized, truncated, version, name, failed, errors, changed, uncertainty)

    @staticmethod
    def _raise_if_failed(result: ScoreResult, raise_on_failure: bool) -> ScoreResult:
        if raise_on_failure and result.failed:
            raise RewardUnavailable(
                f"{result.failed} item(s) could not be scored: {'; '.join(result.errors)}"
            )
        return result

    @staticmethod
    def _models_body(outcome: Outcome) -> dict[str, Any]:
        if outcome.body is None:
            raise RewardUnavailable(f"GET /v1/models failed: {outcome.error}")
        return outcome.body
