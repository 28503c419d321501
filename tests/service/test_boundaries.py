"""`service/` is the torch-free runtime: it imports nothing from `training/`, `bench/` or `cli/`.

Checked twice: statically (every import statement of every file under service/, including imports
inside functions, which a plain import test would not execute) and dynamically (import every service
module in a fresh interpreter and look at what got loaded).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
FORBIDDEN = ("training", "bench", "cli")


def imported_roots(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_scan_sees_every_import_form() -> None:
    source = "import training.data\nfrom bench import serve\ndef f():\n    from cli.main import app\n"
    assert [root for _, root in imported_roots(source)] == ["training", "bench", "cli"]


def test_no_service_file_imports_training_bench_or_cli() -> None:
    files = sorted(SERVICE.rglob("*.py"))
    assert SERVICE / "client" / "__init__.py" in files  # subpackages are scanned too
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {root}"
        for path in files
        for line, root in imported_roots(path.read_text(encoding="utf-8"))
        if root in FORBIDDEN
    ]
    assert not bad, bad


def test_importing_every_service_module_loads_none_of_them() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
    assert {"service.app", "service.client", "service.client._core"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
