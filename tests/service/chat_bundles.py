"""A tiny but real `chat` bundle for service tests: the tiny graph and MiniLM tokenizer of
`tests.bundle_factory`, with any chat template in its manifest.

    bundle = make_chat_bundle(tmp_path / "chat", CHATML, {"eos_token": "</s>"})

The MiniLM tokenizer has no chat special tokens, so a template's markers are read as plain word pieces:
enough for the service's contract (the text the template renders is what the graph reads), and the
graph has no position limit, so `max_length` may exceed the MiniLM model's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from service.bundle import CHAT_TEMPLATE_NAME, MANIFEST_NAME, write_manifest
from service.encoding import CHAT_TRUNCATION_POLICY_NAME
from tests.bundle_factory import make_tiny_bundle


def make_chat_bundle(
    path: Path,
    template: str,
    special_tokens: Mapping[str, str],
    max_length: int = 512,
    version: str = "1",
    score_mean: float = 0.0,
    score_std: float = 1.0,
) -> Path:
    bundle = make_tiny_bundle(path, version=version, score_mean=score_mean, score_std=score_std)
    (bundle / CHAT_TEMPLATE_NAME).write_text(template, encoding="utf-8")
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    fields = {k: v for k, v in raw.items() if k not in ("format", "format_version", "files")}
    write_manifest(
        bundle,
        {
            **fields,
            "input_format": "chat",
            "chat_template": {"special_tokens": dict(special_tokens)},
            "truncation": {"policy": CHAT_TRUNCATION_POLICY_NAME, "max_length": max_length},
            "max_length": max_length,
        },
    )
    return bundle
