"""Fixtures of the benchmark tests: the tiny bundles and the in-thread server of the service tests, and
tiny random Llama `chat` bundles (SmolLM2's real tokenizer and chat template) imported by `rlhf import-rm`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.conftest import bundle_root, bundle_v1, live  # noqa: F401  (re-exported fixtures)


@dataclass(frozen=True)
class ChatBundles:
    with_int8: Path  # fp32 and int8 graphs (the int8 gate passed)
    fp32_only: Path  # the int8 gate failed: fp32 only, the manifest says why


@pytest.fixture(scope="session")
def chat_bundles(tmp_path_factory: pytest.TempPathFactory) -> ChatBundles:
    """A random 2-layer LlamaForSequenceClassification with SmolLM2's tokenizer, imported twice: once
    with int8 shipped, once with an int8 gate no graph can pass (int8 falls back to fp32)."""
    # torch and transformers only for the tests that build these bundles
    from tests.training.decoder_helpers import smollm_tokenizer_dir
    from tests.training.test_import_rm import SMALL, make_checkpoint
    from training.reward.export.config import ImportConfig
    from training.reward.export.import_rm import import_checkpoint

    root = tmp_path_factory.mktemp("bench-chat")
    checkpoint = make_checkpoint(root / "llama", "llama", smollm_tokenizer_dir(root / "smollm"))
    with_int8 = import_checkpoint(checkpoint, root / "rm-chat", ImportConfig(**SMALL))  # type: ignore[arg-type]
    no_int8 = {**SMALL, "max_int8_drop": -100.0}  # int8 would have to beat fp32 by 100 points
    fp32_only = import_checkpoint(checkpoint, root / "rm-chat-fp32", ImportConfig(**no_int8))  # type: ignore[arg-type]
    assert with_int8.manifest.input_format == fp32_only.manifest.input_format == "chat"
    assert with_int8.manifest.precisions == ["fp32", "int8"] and fp32_only.manifest.precisions == ["fp32"]
    return ChatBundles(with_int8.bundle_dir, fp32_only.bundle_dir)
