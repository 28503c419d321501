"""SIGTERM drains: in-flight requests finish, new ones get 503, then the process exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.app import create_app
from tests.service.conftest import LiveServer, dead_url, settings_for, slow_factory, wait_ready

ROOT = Path(__file__).resolve().parents[2]
PAIR = {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast."}


def test_drain_lets_in_flight_finish_and_refuses_new_requests(bundle_v1: Path) -> None:
    app = create_app(settings_for(bundle_v1, drain_seconds=10), backend_factory=slow_factory(0.6))
    state = app.state.service
    with LiveServer(app) as live:
        results: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: results.append(httpx.post(f"{live.url}/score", json={"pairs": [PAIR]}, timeout=30))
        )
        in_flight.start()
        for _ in range(200):
            if state.batcher._admitted_pairs:
                break
            time.sleep(0.005)
        live.server.handle_exit(signal.SIGTERM, None)  # what the SIGTERM handler calls
        refused = httpx.post(f"{live.url}/score", json={"pairs": [PAIR]})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "draining"
        assert httpx.get(f"{live.url}/readyz").status_code == 503
        assert httpx.get(f"{live.url}/healthz").status_code == 200
        in_flight.join()
        assert results[0].status_code == 200 and len(results[0].json()["scores"]) == 1
        live.thread.join(timeout=10)
        assert not live.thread.is_alive(), "the server did not stop after draining"


def test_python_m_service_exits_cleanly_on_sigterm(bundle_v1: Path) -> None:
    port = dead_url().rsplit(":", 1)[1]
    env = {**os.environ, "RLHF_BUNDLE": str(bundle_v1), "RLHF_PORT": port, "RLHF_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=60)
        assert httpx.post(f"http://127.0.0.1:{port}/score", json={"pairs": [PAIR]}).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_python_m_service_refuses_a_broken_bundle_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "RLHF_BUNDLE": str(tmp_path / "nope")}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
    env = {**os.environ, "RLHF_MAX_QUEUE_PAIRS": "1", "RLHF_MAX_PAIRS_PER_REQUEST": "5"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "max_pairs_per_request" in result.stderr
