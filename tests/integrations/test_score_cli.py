"""`rlhf score` as a user runs it: a subprocess against a real service, killed mid-way and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.integrations.test_scorefile import ROWS, write_jsonl
from tests.service.conftest import LiveServer, settings_for, slow_factory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Each model run takes 20 ms longer: a run of a few hundred rows lasts long enough to be killed."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("score-cli") / "rm", version="3")
    with LiveServer(create_app(settings_for(bundle), backend_factory=slow_factory(0.02))) as server:
        yield server


def rlhf_score(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "score", *args]


def test_killed_then_resumed_equals_an_uninterrupted_run(slow_service: LiveServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl.gz", ROWS * 60)  # 420 rows, 540 pairs
    url = f"{slow_service.url},{slow_service.url}"  # two "replicas": the client spreads over both
    common = ["--data", str(data), "--service", url, "--block-rows", "8", "--chunk-size", "4"]

    whole = tmp_path / "whole.jsonl"
    done = subprocess.run(rlhf_score(*common, "--out", str(whole)), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "420/420" in done.stderr  # the progress bar reached the end
    assert "420 rows scored" in done.stdout

    out = tmp_path / "out.jsonl"
    run = subprocess.Popen(rlhf_score(*common, "--out", str(out), "--no-progress"), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 40):
        assert run.poll() is None, (
            f"finished before it could be killed: {run.stderr.read().decode() if run.stderr else ''}"
        )
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    written = out.read_bytes().count(b"\n")
    assert 40 <= written < 420, f"{written} rows written when killed"

    again = subprocess.run(rlhf_score(*common, "--out", str(out)), cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert again.returncode == 2 and "--resume" in again.stderr  # never appends to a file by surprise

    resumed = subprocess.run(rlhf_score(*common, "--out", str(out), "--resume"), cwd=ROOT, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"{420 - written} rows scored" in resumed.stdout and f"{written} already there" in resumed.stdout
    assert out.read_bytes() == whole.read_bytes()
    assert [json.loads(line)["row"] for line in out.read_text().splitlines()] == list(range(420))


def test_an_unreachable_service_exits_1_and_a_bad_file_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    from tests.service.conftest import dead_url

    down = subprocess.run(
        rlhf_score("--data", str(data), "--service", dead_url(), "--out", str(tmp_path / "o.jsonl"),
                   "--max-retries", "0", "--no-progress"),
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert down.returncode == 1 and "rerun with --resume" in down.stderr
    assert (tmp_path / "o.jsonl").read_text() == ""  # nothing made up
    (tmp_path / "bad.jsonl").write_text('{"title": "x"}\n')
    bad = subprocess.run(
        rlhf_score("--data", str(tmp_path / "bad.jsonl"), "--service", dead_url(), "--out", str(tmp_path / "b.jsonl")),
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad.jsonl:1" in bad.stderr
