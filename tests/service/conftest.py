"""Fixtures for the service tests: tiny real bundles and a real uvicorn server on a free port.

`LiveServer` runs the production server class (`service.server.DrainingServer`) in a background thread
on a socket bound to 127.0.0.1:0, so tests talk HTTP over a real socket.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.backend import Backend, OnnxBackend
from service.server import DrainingServer, build_server
from service.settings import ServiceSettings
from tests.bundle_factory import make_tiny_bundle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T = TypeVar("T")


class LiveServer:
    """A real uvicorn server for `app` in a background thread; `.url` is its base URL."""

    def __init__(
        self, app: FastAPI, settings: ServiceSettings | None = None, wait_ready: bool = True
    ) -> None:
        self.app = app
        self.settings = settings or app.state.service.settings
        self.wait_ready = wait_ready
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: DrainingServer = build_server(
            self.settings.model_copy(update={"log_level": "warning"}), app
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        if self.wait_ready:
            wait_ready(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def live_servers(configs: Mapping[str, ServiceSettings]) -> Iterator[dict[str, LiveServer]]:
    """One real server per settings, by name, all started before the block and all stopped after it
    (those already started are stopped too when a later one fails to start)."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(LiveServer(create_app(s))) for name, s in configs.items()}


def concurrently(call: Callable[[int], T], n: int) -> list[T]:
    """``call(i)`` for every i < n, each in its own thread and all in flight at once (clients that send
    one request each); the results in index order. An exception in any call is raised here."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not become ready")


class SlowBackend:
    """Wraps the real onnxruntime backend and sleeps before each run (to fill queues / hold requests)."""

    def __init__(self, inner: Backend, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.input_names = inner.input_names
        self.output_names = inner.output_names
        self.calls = 0
        self.rows = 0

    def health(self) -> None:
        self.inner.health()

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.rows += batch["input_ids"].shape[0]
        time.sleep(self.delay)
        return self.inner.run(batch)


def slow_factory(delay: float) -> Any:
    def factory(path: Path, names: Sequence[str], threads: int) -> Backend:
        return SlowBackend(OnnxBackend(path, names, threads), delay)

    return factory


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    make_tiny_bundle(root / "rm-v1", version="1", seed=0, score_mean=0.5, score_std=2.0)
    make_tiny_bundle(root / "rm-v2", version="2", seed=1)
    make_tiny_bundle(root / "rm-fp32", version="3", seed=0, with_int8=False)
    return root


@pytest.fixture(scope="session")
def bundle_v1(bundle_root: Path) -> Path:
    return bundle_root / "rm-v1"


def settings_for(bundle: Path | None, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"bundle": bundle, "intra_op_threads": 1, "batch_wait_ms": 2.0, **overrides}
    return ServiceSettings(**values)


def score_of(url: str, pairs: Sequence[tuple[str, str]]) -> dict:
    """What /score says of the (question, answer) pairs: the reference every protocol must match."""
    body = {"pairs": [{"question": q, "answer": a} for q, a in pairs]}
    response = httpx.post(f"{url}/score", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# ---- a bundle with an ensemble of four quality heads: every score comes with the heads' spread ---------
ENSEMBLE_MEAN, ENSEMBLE_STD = 1.0, 2.0  # not 0 and 1: raw, normalised and [0, 1] rewards differ


def make_ensemble_bundle(bundle_dir: Path) -> Path:
    return make_tiny_bundle(
        bundle_dir, version="ens", seed=3, quality_heads=4, score_mean=ENSEMBLE_MEAN, score_std=ENSEMBLE_STD
    )


@pytest.fixture(scope="module")
def ensemble_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    bundle = make_ensemble_bundle(tmp_path_factory.mktemp("ensemble") / "rm")
    with LiveServer(create_app(settings_for(bundle))) as server:
        yield server


def penalised_reference(
    url: str, pairs: Sequence[tuple[str, str]], penalty: float
) -> tuple[np.ndarray, dict]:
    """score - penalty·uncertainty from the service's own /score of the pairs (and that /score body)."""
    direct = score_of(url, pairs)
    spread = np.asarray(direct["uncertainty"])
    assert (spread > 0).all(), "the heads must disagree, or the penalty would test nothing"
    return np.asarray(direct["scores"]) - penalty * spread, direct


@pytest.fixture
def live(bundle_v1: Path) -> Iterator[LiveServer]:
    """A default server on the v1 bundle (function scope: state never leaks between tests)."""
    with LiveServer(create_app(settings_for(bundle_v1))) as server:
        yield server


@pytest.fixture(scope="module")
def shared_live(bundle_v1: Path) -> Iterator[LiveServer]:
    """One server for read-only tests of a module (saves start-up time)."""
    with LiveServer(create_app(settings_for(bundle_v1))) as server:
        yield server


class PlainServer:
    """Any ASGI app (e.g. a scripted test app) under plain uvicorn on a free port in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> PlainServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def dead_url() -> str:
    """A URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
