"""Hot reload: confinement under the bundle root, refusal keeps the old model, swap under load."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.errors import ReloadFailed
from service.state import resolve_bundle_path
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for, slow_factory

PAIR = {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast."}


def test_resolve_confines_paths(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "b").mkdir()
    assert resolve_bundle_path(root, "b") == root / "b"
    assert resolve_bundle_path(root, str(root / "b")) == root / "b"
    for bad in ["../b", "b/../../etc", "/etc", str(root), ".", "x\x00y"]:
        with pytest.raises(ReloadFailed):
            resolve_bundle_path(root, bad)
    (root / "escape").symlink_to("/tmp")
    with pytest.raises(ReloadFailed, match="outside the bundle root"):
        resolve_bundle_path(root, "escape")
    with pytest.raises(ReloadFailed, match="disabled"):
        resolve_bundle_path(None, "b")


def reload(url: str, bundle: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/reload", json={"bundle": bundle}, timeout=30)


def reload_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    return {
        s.labels["result"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "rlhf_reloads"
        for s in f.samples
        if s.name == "rlhf_reloads_total"
    }


def test_refusals_keep_the_old_model(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    make_tiny_bundle(root / "good", version="1")
    corrupt = make_tiny_bundle(root / "corrupt", version="9", seed=3)
    (corrupt / "model.onnx").write_bytes(b"not an onnx graph")
    not_a_bundle = root / "empty"
    not_a_bundle.mkdir()
    outside = make_tiny_bundle(tmp_path / "outside", version="7")
    with LiveServer(create_app(settings_for(root / "good", bundle_root=root))) as server:
        before = httpx.post(f"{server.url}/score", json={"pairs": [PAIR]}).json()
        cases = {
            "missing": "does-not-exist",
            "traversal": "../outside",
            "absolute outside": str(outside),
            "corrupt": "corrupt",
            "not a bundle": "empty",
        }
        for case, path in cases.items():
            response = reload(server.url, path)
            assert response.status_code == 422, (case, response.text)
            error = response.json()["error"]
            assert error["type"] == "reload_failed", case
            assert error["message"], case
        assert "corrupt or was replaced" in reload(server.url, "corrupt").json()["error"]["message"]
        assert "still serving tiny-rm 1" in reload(server.url, "corrupt").json()["error"]["message"]
        after = httpx.post(f"{server.url}/score", json={"pairs": [PAIR]})
        assert after.json() == before and after.headers["x-model-version"] == "1"
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        counts = reload_counts(server.url)
        assert counts["failed"] == len(cases) + 2 and counts["ok"] == 0


def test_int8_requested_but_absent_is_refused(bundle_root: Path) -> None:
    with LiveServer(create_app(settings_for(bundle_root / "rm-v1"))) as server:
        response = httpx.post(f"{server.url}/admin/reload", json={"bundle": "rm-fp32", "precision": "int8"})
        assert response.status_code == 422 and "no int8 graph" in response.json()["error"]["message"]
        ok = httpx.post(f"{server.url}/admin/reload", json={"bundle": "rm-fp32"})
        assert ok.status_code == 200 and ok.json()["model"]["precision"] == "fp32"
        assert ok.json()["previous"]["version"] == "1"


def test_reload_under_load_has_zero_failures_and_the_version_changes(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    make_tiny_bundle(root / "v1", version="1", seed=0)
    make_tiny_bundle(root / "v2", version="2", seed=1)
    app = create_app(settings_for(root / "v1"), backend_factory=slow_factory(0.005))
    failures: list[str] = []
    versions: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()
    with LiveServer(app) as server:

        def hammer(k: int) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    response = client.post(f"{server.url}/score", json={"pairs": [PAIR] * 3})
                    if response.status_code != 200:
                        failures.append(response.text)
                        continue
                    body = response.json()
                    assert body["model"]["version"] == response.headers["x-model-version"]
                    versions[k].append(body["model"]["version"])

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        threading.Event().wait(0.3)
        swapped = reload(server.url, "v2")
        threading.Event().wait(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["model"]["version"] == "2" and swapped.json()["previous"]["version"] == "1"
    assert failures == []
    for seen in versions:
        assert seen[0] == "1" and seen[-1] == "2", seen[:3] + seen[-3:]
        assert seen == sorted(seen)  # never back to the old model once switched


def test_reload_of_a_copied_bundle_dir(tmp_path: Path, bundle_v1: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(bundle_v1, root / "one")
    shutil.copytree(bundle_v1, root / "two")
    with LiveServer(create_app(settings_for(root / "one"))) as server:
        assert reload(server.url, "two").json()["model"]["path"] == str((root / "two").resolve())
