"""Security: bearer auth on every route but an explicit allow-list, reload confined to the bundle root,
body size limited before parsing, no pickle loading in the code base, and a dependency audit target.

Open without a key (OPEN_ROUTES), on purpose:
- /healthz, /readyz: probes of the kubelet and load balancers, which send no bearer token; they reveal
  only "up" / "ready" and the model name and version (also sent as headers on every response).
- /metrics: scraped by Prometheus without a token (deploy/); aggregate counters and histograms only,
  never request text or individual scores. Keep it on the cluster network (it is not on the Ingress).
- /openapi.json, /docs, /docs/oauth2-redirect, /redoc: the public API description; no data.
Everything else (scoring, /v1/models, /admin/*) must answer 401 without the right key. A new route
that is neither protected nor added here fails the enumeration test.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.reliability.figures import Figures
from tests.service.conftest import LiveServer, settings_for

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ADMIN_KEY = "scoring-key-1234", "admin-key-5678"
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
PAIR = {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast."}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle root with rm-v1 and rm-v2, a directory OUTSIDE it holding a perfectly valid bundle)."""
    base = tmp_path_factory.mktemp("confine")
    root, outside = base / "root", base / "outside"
    make_tiny_bundle(root / "rm-v1", version="1", seed=0)
    make_tiny_bundle(root / "rm-v2", version="2", seed=1)
    make_tiny_bundle(outside / "evil", version="666", seed=2)
    (root / "link-out").symlink_to(outside / "evil", target_is_directory=True)
    (root / "link-up").symlink_to(base, target_is_directory=True)
    return root, outside


@pytest.fixture(scope="module")
def secured(roots: tuple[Path, Path]) -> Iterator[LiveServer]:
    root, _ = roots
    settings = settings_for(
        root / "rm-v1", api_key=API_KEY, admin_key=ADMIN_KEY, bundle_root=root, max_body_bytes=64 * 1024
    )
    with LiveServer(create_app(settings)) as live:
        yield live


def _flat_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """(path, route) of every endpoint, through included routers (FastAPI >= 0.16x wraps them)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _flat_routes(included.routes, prefix + (getattr(context, "prefix", "") or ""))
            continue
        assert isinstance(route, APIRoute | Route), f"unexpected route type {type(route)}: enumerate it too"
        yield prefix + route.path, route


def _routes(live: LiveServer) -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, route in _flat_routes(list(live.app.routes))
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"})
    ]


def test_every_route_but_the_allow_list_needs_a_key(secured: LiveServer, figures: Figures) -> None:
    scenario = figures.scenario("security/auth")
    routes = _routes(secured)
    paths = {path for _, path in routes}
    assert paths >= OPEN_ROUTES, f"allow-list names routes that no longer exist: {OPEN_ROUTES - paths}"
    protected = [(m, p) for m, p in routes if p not in OPEN_ROUTES]
    assert {"/score", "/score/groups", "/get_reward", "/v1/models", "/admin/reload"} <= {
        p for _, p in protected
    }
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
                scenario.inputs += 1
                scenario.sent += 1
                response = client.request(
                    method, path, json={} if method == "POST" else None, headers=headers
                )
                if path in OPEN_ROUTES:
                    assert response.status_code == 200, (method, path, response.status_code)
                else:
                    assert response.status_code == 401, (method, path, headers, response.status_code)
                    assert response.json()["error"]["type"] == "unauthorized"
                    assert response.headers["www-authenticate"] == "Bearer"
        # the scoring key does not open the admin route, the admin key does not open scoring routes
        scenario.sent += 4
        assert client.post("/admin/reload", json={"bundle": "rm-v1"},
                           headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401  # fmt: skip
        assert client.post("/score", json={"pairs": [PAIR]},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401  # fmt: skip
        assert client.post("/score", json={"pairs": [PAIR]},
                           headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200  # fmt: skip
        assert client.get("/v1/models", headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200


BAD_RELOAD_PATHS = {
    "absolute path outside the root": lambda root, out: str(out / "evil"),
    "../ traversal": lambda root, out: "../outside/evil",
    "traversal after a real bundle": lambda root, out: "rm-v2/../../outside/evil",
    "absolute path with traversal": lambda root, out: f"{root}/../outside/evil",
    "symlink inside the root pointing out": lambda root, out: "link-out",
    "symlink to the root's parent": lambda root, out: "link-up/outside/evil",
    "the root itself": lambda root, out: str(root),
    "system directory": lambda root, out: "/etc",
    "home shorthand": lambda root, out: "~",
    "NUL byte": lambda root, out: "rm-v2\x00",
    "lone surrogate": lambda root, out: "rm-\ud800",
    "missing bundle": lambda root, out: "rm-v9",
    "a file, not a directory": lambda root, out: "rm-v2/manifest.json",
}


@pytest.mark.parametrize("name", list(BAD_RELOAD_PATHS))
def test_reload_is_confined_to_the_bundle_root(
    secured: LiveServer, roots: tuple[Path, Path], figures: Figures, name: str
) -> None:
    scenario = figures.scenario("security/confinement")
    root, outside = roots
    requested = BAD_RELOAD_PATHS[name](root, outside)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    scoring = {"Authorization": f"Bearer {API_KEY}"}
    scenario.inputs += 1
    scenario.faults += 1
    scenario.sent += 2
    body = json.dumps({"bundle": requested})  # ASCII escapes, so a lone surrogate reaches the server
    response = httpx.post(
        f"{secured.url}/admin/reload",
        content=body,
        headers={**admin, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] in {"reload_failed", "validation_failed"}
    served = httpx.post(f"{secured.url}/score", json={"pairs": [PAIR]}, headers=scoring, timeout=30)
    assert served.status_code == 200 and served.json()["model"]["version"] == "1"
    if response.status_code >= 500 or served.status_code != 200:
        scenario.lost += 1
    scenario.assert_nothing_lost(name)


def test_a_bundle_inside_the_root_does_reload(secured: LiveServer, figures: Figures) -> None:
    """The control: confinement refuses paths, not reloads."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    figures.scenario("security/confinement").sent += 2
    to_v2 = httpx.post(f"{secured.url}/admin/reload", json={"bundle": "rm-v2"}, headers=admin, timeout=30)
    assert to_v2.status_code == 200 and to_v2.json()["model"]["version"] == "2"
    back = httpx.post(f"{secured.url}/admin/reload", json={"bundle": "rm-v1"}, headers=admin, timeout=30)
    assert back.status_code == 200 and back.json()["model"]["version"] == "1"


def test_body_size_is_refused_before_the_body_is_read(secured: LiveServer, figures: Figures) -> None:
    """Declare a 1 GB body and send none of it: a 413 must come back at once (nothing is buffered)."""
    scenario = figures.scenario("security/body-limit")
    scenario.inputs += 1
    scenario.sent += 1
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n{"
        )
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert '"payload_too_large"' in head or "payload_too_large" in head


# ---- no pickle anywhere ----------------------------------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _pickle_uses(path: Path) -> list[str]:
    """Loader calls that can execute code from a file: pickle-family imports, torch.load without
    weights_only=True, any allow_pickle=True, pandas.read_pickle."""
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"imports {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load") or (func == "load" and "weights_only" in keywords):
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{func}(...) without weights_only=True")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{func}(..., allow_pickle=...)")
            if func.endswith("read_pickle") or func.endswith("pickle.loads") or func.endswith("pickle.load"):
                problems.append(f"calls {func}")
    return [f"{path.relative_to(ROOT)}: {p}" for p in problems]


def test_no_pickle_loading_in_service_or_training(figures: Figures) -> None:
    files = sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "training").rglob("*.py")])
    figures.scenario("security/static").inputs += len(files)
    assert len(files) > 30
    problems = [p for f in files for p in _pickle_uses(f)]
    assert not problems, "pickle loading found:\n" + "\n".join(problems)


def test_the_pickle_scan_catches_what_it_names(tmp_path: Path) -> None:
    """The scanner itself must fail on each pattern (else the test above could never fail)."""
    bad = {
        "import pickle": "imports pickle",
        "from joblib import load": "imports joblib",
        "import torch\ntorch.load('x')": "without weights_only=True",
        "import torch\ntorch.load('x', weights_only=False)": "without weights_only=True",
        "import numpy as np\nnp.load('x', allow_pickle=True)": "allow_pickle",
        "import pandas as pd\npd.read_pickle('x')": "read_pickle",
    }
    for source, expected in bad.items():
        path = ROOT / "runs" / "_pickle_probe.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
        try:
            found = _pickle_uses(path)
        finally:
            path.unlink()
        assert any(expected in p for p in found), (source, found)
    good = ROOT / "runs" / "_pickle_probe.py"
    good.write_text("import torch\ntorch.load('x', weights_only=True)\nimport numpy as np\nnp.load('x')\n")
    try:
        assert _pickle_uses(good) == []
    finally:
        good.unlink()


# ---- dependency audit --------------------------------------------------------------------------------
def test_make_audit_target_runs_pip_audit() -> None:
    """`make audit` exists and runs pip-audit in strict mode. The audit itself needs PyPI's JSON API
    (per-version advisories), so it is a separate target, not part of `make test`; this dry run checks
    the recipe without the network. Strict matters: without it, packages pip-audit cannot look up are
    skipped and the run still says "No known vulnerabilities found"."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^audit:", makefile, re.M), "no audit target in the Makefile"
    recipe = subprocess.run(
        ["make", "-n", "audit"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )  # fmt: skip
    assert recipe.returncode == 0, recipe.stderr
    assert "pip-audit" in recipe.stdout and "--strict" in recipe.stdout  # unauditable = failure, not a pass
