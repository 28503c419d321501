"""A scoring server in its own process (so tests can signal it, kill it and read its memory).

with ServerProcess(bundle, delay=0.02, max_queue_pairs=32) as server:
    httpx.post(f"{server.url}/score", json=...)
    server.rss_bytes()            # resident memory of the server process
    server.terminate()            # SIGTERM: the drain
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from tests.service.conftest import dead_url, wait_ready

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, bundle: Path, *, delay: float = 0.0, port: int | None = None, **settings: Any) -> None:
        self.port = port or int(dead_url().rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RLHF_BUNDLE": str(bundle),
            "RLHF_HOST": "127.0.0.1",
            "RLHF_PORT": str(self.port),
            "RLHF_LOG_LEVEL": "warning",
            "RLHF_INTRA_OP_THREADS": "1",
            "RLHF_TEST_BACKEND_DELAY": str(delay),
            **{f"RLHF_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        # the server's stderr goes to a file (a pipe could fill up and block it); opened by start()
        self.log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start (or restart, on the same port) the server and wait until /readyz says ready."""
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  lives as long as the process; closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.serve_slow"], cwd=ROOT, env=self.env,
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        wait_ready(self.url, timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident set size from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line in /proc/<pid>/status")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.log is not None:
            self.log.close()
            self.log = None

    def stderr(self) -> str:
        """The tail of the server's log (for assertion messages)."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
