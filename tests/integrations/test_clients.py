"""integrations.clients: where adapters find the service, one client per process/loop; and the package
stays torch-free (it is imported inside trainers' processes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from integrations.clients import PerLoop, ServiceNotConfigured, api_key, service_urls, shared_client


def test_urls_given_or_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_SERVICE_URL", "http://a:8000, http://b:8000,")
    assert service_urls() == ["http://a:8000", "http://b:8000"]
    assert service_urls("http://c:1") == ["http://c:1"]
    assert service_urls(["http://d:1"]) == ["http://d:1"]
    monkeypatch.delenv("RLHF_SERVICE_URL")
    with pytest.raises(ServiceNotConfigured, match="RLHF_SERVICE_URL"):
        service_urls()
    with pytest.raises(ServiceNotConfigured):
        service_urls(" , ")


def test_api_key_given_or_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_API_KEY", "s3cret")
    assert api_key() == "s3cret" and api_key("other") == "other"
    monkeypatch.setenv("RLHF_API_KEY", "")
    assert api_key() is None


def test_one_blocking_client_per_urls_key_and_options() -> None:
    first = shared_client("http://x:1", "k")
    assert shared_client("http://x:1", "k") is first
    assert shared_client("http://x:1", "k", max_retries=0) is not first
    assert shared_client("http://x:1", "other") is not first
    assert first.headers == {"Authorization": "Bearer k"}


def test_one_async_object_per_event_loop() -> None:
    per_loop = PerLoop(object)

    async def get() -> tuple[object, object]:
        return per_loop.get(), per_loop.get()

    a1, a2 = asyncio.run(get())
    b1, _ = asyncio.run(get())
    assert a1 is a2 and a1 is not b1


def test_the_adapters_import_no_torch() -> None:
    modules = [
        "convert",
        "clients",
        "trl_reward",
        "verl_reward",
        "openrlhf_reward",
        "slime_reward",
        "scorefile",
    ]
    code = "import sys\n" + "".join(f"import integrations.{m}\n" for m in modules)
    code += "import cli.score\nassert 'torch' not in sys.modules, 'an adapter imported torch'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
