"""The trainers' released code as the tests run it: the wheel from PyPI, and one module of it.

    root = released_package("verl", "0.9.1")          # .cache/wheels/verl-0.9.1/ (downloaded once)
    naive = load_released(root, "verl.experimental.reward_loop.reward_manager.naive", monkeypatch,
                          stubs={"verl": {"DataProto": object}, ...})

Why not `pip install openrlhf verl`: they pull Ray, vLLM, DeepSpeed and CUDA builds of torch, and pin
versions that conflict with ours. The reward call each trainer makes is a few dozen lines of one
module, so the tests execute *that file from the released wheel*, unmodified:

* the wheel is fetched with ``pip download --no-deps`` into ``.cache/wheels`` (gitignored) for a fixed
  Python/platform tag, so the same file is fetched on any runner, and unpacked beside it;
* the module is executed from its file under its own dotted name; its parent packages are bare
  package objects pointing into the unpacked wheel (their ``__init__`` files, which import the heavy
  world, are not run), so its relative imports and light sibling modules load for real;
* the heavy modules it imports at the top are replaced, for the duration of one test
  (``monkeypatch.setitem(sys.modules, ...)``), by stubs listed by name in each test. A stub's
  attributes are :class:`Absent` unless the test gives a value: an Absent raises as soon as the code
  under test calls it, so a stub can stand in for an import but never silently for behaviour.
"""

from __future__ import annotations

import subprocess
import sys
import types
import zipfile
from collections.abc import Mapping
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "wheels"
# one tag for every runner: the file inside is pure Python whatever the wheel's platform tag
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"]


class Absent:
    """An attribute of a stub module: usable in annotations at import time, raises when used."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{self.name} is a test stub: the code under test was not expected to call it")

    def __getattr__(self, attr: str) -> Absent:
        return Absent(f"{self.name}.{attr}")

    def __getitem__(self, item: Any) -> Absent:
        return self


def released_package(name: str, version: str) -> Path:
    """The directory holding ``name``'s top-level package, unpacked from its released wheel."""
    target = CACHE / f"{name}-{version}"
    done = target / ".unpacked"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheels = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
        if not wheels:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", *PIP_TARGET, f"{name}=={version}",
                 "-d", str(CACHE), "-q"],
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"pip download {name}=={version} failed: {result.stderr[-2000:]}"
            wheels = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(target)
        done.touch()
    # a wheel keeps its packages at the top, or under <dist>.data/purelib (openrlhf's do)
    for candidate in [target, *target.glob("*.data/purelib")]:
        if (candidate / name).is_dir():
            return candidate
    raise AssertionError(f"no {name}/ package in the {name} {version} wheel at {target}")


def stub_module(name: str, attrs: Mapping[str, Any] | None = None) -> types.ModuleType:
    """A module whose listed attributes have the given values and whose others are Absent."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs or {})

    def absent(attr: str) -> Absent:
        if attr.startswith("__"):  # import machinery probing (__path__, __file__...): a plain module
            raise AttributeError(attr)
        return Absent(f"{name}.{attr}")

    module.__getattr__ = absent  # type: ignore[method-assign]
    return module


def load_released(
    root: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    stubs: Mapping[str, Mapping[str, Any]] | None = None,
) -> types.ModuleType:
    """Execute ``root/<name>.py`` as module ``name``, with ``stubs`` standing in for heavy imports."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package in (stubs or {}) or package in sys.modules:
            continue  # a stub, or loaded earlier in this test (a real module of the wheel, or a bare one)
        bare = types.ModuleType(package)
        bare.__path__ = [str(root.joinpath(*parts[:depth]))]
        monkeypatch.setitem(sys.modules, package, bare)
    for stub, attrs in (stubs or {}).items():
        monkeypatch.setitem(sys.modules, stub, stub_module(stub, attrs))
    path = root.joinpath(*parts).with_suffix(".py")
    spec = spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
