"""Fault injection on hot reload: corrupt, truncated, missing and hash-mismatched bundles are refused
with a reason, and the old model keeps serving throughout (a client thread scores all along).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.app import create_app
from service.bundle import MANIFEST_NAME, MODEL_FILES, TOKENIZER_NAME, sha256_file
from tests.bundle_factory import make_tiny_bundle
from tests.reliability.figures import Figures
from tests.service.conftest import LiveServer, settings_for

PAIR = {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast."}
FP32, INT8 = MODEL_FILES["fp32"], MODEL_FILES["int8"]


def rehash(bundle: Path) -> None:
    """Make the manifest agree with the (damaged) files, so the damage reaches the loader, not the hash."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(manifest))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_head(bundle: Path) -> None:
    """A graph that loads fine but scores NaN: only the canary can catch it."""
    for name in (FP32, INT8):
        model = onnx.load(str(bundle / name))
        for init in model.graph.initializer:
            if init.name == "head_b":
                init.CopyFrom(numpy_helper.from_array(np.array([np.nan], np.float32), "head_b"))
        onnx.save(model, str(bundle / name))
    rehash(bundle)


def rewritten(contents: dict[str, bytes]) -> Callable[[Path], None]:
    """Damage: overwrite files with `contents`, then re-hash (the loader, not the hash, must catch it)."""

    def damage(bundle: Path) -> None:
        for name, data in contents.items():
            (bundle / name).write_bytes(data)
        rehash(bundle)

    return damage


def truncated_graphs(bundle: Path) -> None:
    truncate(bundle / FP32)
    truncate(bundle / INT8)
    rehash(bundle)


def other_format(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps({"format": "pickle"}))


# name -> (damage to apply to a copy of a good bundle, words the refusal must contain)
FAULTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "hash mismatch (one byte flipped)": (lambda b: flip_byte(b / FP32), ("sha256", FP32)),
    "int8 graph hash mismatch": (lambda b: flip_byte(b / INT8), ("sha256", INT8)),
    "tokenizer hash mismatch": (lambda b: flip_byte(b / TOKENIZER_NAME), ("sha256", TOKENIZER_NAME)),
    "corrupt graph (garbage, re-hashed)": (rewritten({FP32: b"\x00garbage" * 999, INT8: b"junk" * 99}), ()),
    "truncated graph (re-hashed)": (truncated_graphs, ()),
    "empty graph (re-hashed)": (rewritten({FP32: b"", INT8: b""}), ()),
    "corrupt tokenizer (re-hashed)": (rewritten({TOKENIZER_NAME: b"{not json"}), ("not a valid tokenizer",)),
    "truncated manifest": (lambda b: truncate(b / MANIFEST_NAME), (MANIFEST_NAME,)),
    "manifest of another format": (other_format, ("format",)),
    "missing graph file": (lambda b: (b / FP32).unlink(), ("missing",)),
    "missing manifest": (lambda b: (b / MANIFEST_NAME).unlink(), ("missing",)),
    "missing bundle directory": (shutil.rmtree, ("does not exist",)),
    "graph that scores NaN (canary)": (nan_head, ("canary",)),
}


@pytest.fixture(scope="module")
def reload_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload-faults")
    make_tiny_bundle(root / "good", version="1", seed=0)
    for i, (damage, _) in enumerate(FAULTS.values()):
        target = root / f"fault-{i}"
        make_tiny_bundle(target, version="2", seed=1)
        damage(target)
    return root


@pytest.fixture(scope="module")
def server(reload_root: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(reload_root / "good", bundle_root=reload_root))) as live:
        yield live


def test_broken_bundles_are_refused_and_the_old_model_keeps_serving(
    server: LiveServer, reload_root: Path, figures: Figures
) -> None:
    scenario = figures.scenario("faults/reload")
    baseline = httpx.post(f"{server.url}/score", json={"pairs": [PAIR]}, timeout=30).json()["scores"][0]
    stop = threading.Event()
    seen: list[tuple[int, float | None, str | None]] = []

    def traffic() -> None:  # a client scoring all along: every answer must be v1's, unchanged
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{server.url}/score", json={"pairs": [PAIR]})
                body = response.json() if response.status_code == 200 else {}
                seen.append((response.status_code, (body.get("scores") or [None])[0],
                             body.get("model", {}).get("version")))  # fmt: skip

    thread = threading.Thread(target=traffic)
    thread.start()
    while len(seen) < 3 and thread.is_alive():  # traffic is flowing before the first fault
        threading.Event().wait(0.01)
    failures = []
    try:
        with httpx.Client(timeout=60) as client:
            for i, (name, (_, words)) in enumerate(FAULTS.items()):
                scenario.faults += 1
                scenario.inputs += 1
                scenario.sent += 1
                response = client.post(f"{server.url}/admin/reload", json={"bundle": f"fault-{i}"})
                is_json = response.headers.get("content-type", "").startswith("application/json")
                error = response.json().get("error", {}) if is_json else {}
                message = error.get("message", "")
                ok = (response.status_code == 422 and error.get("type") == "reload_failed"
                      and "still serving tiny-rm 1" in message and all(w in message for w in words))  # fmt: skip
                if not ok:
                    failures.append(f"{name}: HTTP {response.status_code} {response.text[:300]}")
                if response.status_code >= 500:
                    scenario.lost += 1
            ready = client.get(f"{server.url}/readyz")
            assert ready.status_code == 200 and ready.json()["model"]["version"] == "1"
    finally:
        stop.set()
        thread.join()
    scenario.sent += len(seen)
    bad = [s for s in seen if s != (200, baseline, "1")]
    scenario.lost += len(bad)
    assert not failures, "\n".join(failures)
    assert len(seen) > 3 and not bad, (
        f"{len(bad)} of {len(seen)} requests during reloads were not v1's answer"
    )
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'rlhf_reloads_total{{result="failed"}} {float(len(FAULTS))}' in metrics
    scenario.assert_nothing_lost("faults/reload")
