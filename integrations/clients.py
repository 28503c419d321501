"""Where an adapter finds the service, and the clients it reuses across calls.

    RLHF_SERVICE_URL=http://rm-0:8000,http://rm-1:8000 RLHF_API_KEY=s3cret python train.py

Trainers load some adapters by path with no way to pass arguments (veRL's ``custom_reward_function``,
OpenRLHF's ``--reward.remote_url file.py``, slime's ``--custom-rm-path``), so the service URL(s)
come from ``RLHF_SERVICE_URL`` (comma-separated replicas) and the bearer token from ``RLHF_API_KEY``
(the name the server and `rlhf train-policy` use), unless the adapter is given them explicitly.

Clients are made once per process and per (URLs, key, options), not per sample: a trainer calls a reward function
thousands of times, and each client keeps its connections open. An asyncio client belongs to the event
loop it first ran in (its connection pool and semaphore do), so :class:`PerLoop` keeps one per loop:
TRL runs every async reward function on one loop of its own, veRL and slime on theirs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from service.client import AsyncRewardClient, RewardClient

SERVICE_URL_ENV = "RLHF_SERVICE_URL"
API_KEY_ENV = "RLHF_API_KEY"

T = TypeVar("T")


class ServiceNotConfigured(ValueError):
    """No service URL was given and ``RLHF_SERVICE_URL`` is not set."""


def service_urls(urls: str | Sequence[str] | None = None) -> list[str]:
    """The given URL(s), else ``RLHF_SERVICE_URL``; a string may list several, comma-separated."""
    value: str | Sequence[str] | None = urls if urls else os.environ.get(SERVICE_URL_ENV)
    if not value:
        raise ServiceNotConfigured(
            f"no scoring service URL: pass one, or set {SERVICE_URL_ENV}=http://host:8000 (comma-separated for replicas)"
        )
    parts = value.split(",") if isinstance(value, str) else list(value)
    found = [u.strip() for u in parts if u.strip()]
    if not found:
        raise ServiceNotConfigured(f"no scoring service URL in {value!r}")
    return found


def api_key(key: str | None = None) -> str | None:
    """The given key, else ``RLHF_API_KEY`` (unset or empty: no Authorization header)."""
    return key or os.environ.get(API_KEY_ENV) or None


class PerLoop(Generic[T]):
    """One object per running event loop, made by ``factory`` on first use in that loop."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            for closed in [other for other in self._made if other.is_closed()]:
                del self._made[closed]  # its client holds the loop (weak keys alone would never let go)
            made = self._made.get(loop)
            if made is None:
                made = self._made[loop] = self._factory()
            return made


Key = tuple[tuple[str, ...], str | None, tuple[tuple[str, Any], ...]]  # URLs, key, client options
_sync_clients: dict[Key, RewardClient] = {}
_async_clients: dict[Key, PerLoop[AsyncRewardClient]] = {}
_lock = threading.Lock()


def _key(urls: str | Sequence[str] | None, key: str | None, options: dict[str, Any]) -> Key:
    return tuple(service_urls(urls)), api_key(key), tuple(sorted(options.items()))


def shared_client(
    urls: str | Sequence[str] | None = None, key: str | None = None, **options: Any
) -> RewardClient:
    """This process's blocking client for these URLs, key and client options (made on first use)."""
    cache_key = _key(urls, key, options)
    with _lock:
        client = _sync_clients.get(cache_key)
        if client is None:
            found, token, _ = cache_key
            client = _sync_clients[cache_key] = RewardClient(list(found), api_key=token, **options)
        return client


def shared_async_client(
    urls: str | Sequence[str] | None = None, key: str | None = None, **options: Any
) -> AsyncRewardClient:
    """This event loop's asyncio client for these URLs, key and options; call it from inside the loop."""
    cache_key = _key(urls, key, options)
    with _lock:
        per_loop = _async_clients.get(cache_key)
        if per_loop is None:
            found, token, _ = cache_key
            per_loop = _async_clients[cache_key] = PerLoop(
                lambda: AsyncRewardClient(list(found), api_key=token, **options)
            )
    return per_loop.get()
