"""The service and its client never import torch, transformers or anything under training/."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import service

ROOT = Path(__file__).resolve().parents[2]


def test_every_service_module_imports_without_torch() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
    assert {"service.app", "service.batcher", "service.client", "service.client._core"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'training'))\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
