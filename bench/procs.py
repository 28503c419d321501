"""A server in its own process: a free loopback port, start, wait until ready, SIGTERM, CPU seconds.

    url = f"http://127.0.0.1:{free_port()}"
    with running_server([sys.executable, "-m", "service"], url, env=env) as server:
        cpu = server.cpu_seconds()
        ...                                        # load it over HTTP
        used = server.cpu_seconds() - cpu          # CPU seconds the server spent on that load

Why a separate process: the benchmarks measure a server as it is deployed (its own interpreter,
its own threads), and read its CPU time from /proc, which on a shared machine moves much less with
other people's load than wall-clock speed does. `rlhf bench serve`, `rlhf bench scale`, `rlhf demo`
and the tests all start servers this one way.

The server's stdout and stderr go to a file (``log_path``, or an anonymous temporary file), never to
a pipe: a pipe nobody reads fills up and blocks the server. A server that exits or is not ready in
time raises :class:`ServerFailed` with the tail of that log. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

READY_TIMEOUT_S = 120.0  # loading + verifying a bundle and the canary pass, on a busy 2-core machine
STOP_TIMEOUT_S = 30.0  # the service drains its queue on SIGTERM before it exits


class ServerFailed(RuntimeError):
    """The server process exited, or did not answer its probe in time; the message holds its log tail."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (utime, stime: fields 14, 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    """One started server: its URL, its process and the file its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    name: str  # how error messages name it, e.g. "python -m service"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def log_tail(self, chars: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", errors="replace")[-chars:]

    def wait_ready(self, probe: str = "/readyz", timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``url + probe`` until it answers 200; ServerFailed if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise ServerFailed(
                        f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):  # not listening yet
                    if http.get(self.url + probe).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServerFailed(
                        f"{self.name} was not ready within {timeout:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM (the service drains, then exits), kill after ``timeout``; close the log.

        Returns False when the process had to be killed; ``process.returncode`` holds its exit code.
        """
        stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                stopped = False
        self.log.close()
        return stopped


def start_server(
    command: Sequence[str], url: str, env: Mapping[str, str] | None = None, log_path: Path | None = None
) -> ServerProcess:
    """Start ``command`` (it must listen at ``url``) without waiting; ``env`` None inherits this one's."""
    # the log lives as long as the process; ServerProcess.stop closes it
    log = log_path.open("w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(
        list(command), env=None if env is None else dict(env), stdout=log, stderr=subprocess.STDOUT
    )
    name = " ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command[:3]))
    return ServerProcess(url, process, log, name)


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    url: str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    probe: str = "/readyz",
    ready_timeout: float = READY_TIMEOUT_S,
    stop_timeout: float = STOP_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """Start a server, wait until ``probe`` answers 200, yield it, stop it on exit (errors included)."""
    server = start_server(command, url, env, log_path)
    try:
        server.wait_ready(probe, ready_timeout)
        yield server
    finally:
        server.stop(stop_timeout)
