"""The input format in the bundle contract: a `chat` bundle carries its template and gets a chat
encoder; a manifest written before the format existed still loads as `pair` and scores identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.bundle import (
    CHAT_TEMPLATE_NAME,
    MANIFEST_NAME,
    IntegrityError,
    ManifestError,
    load_bundle,
    read_manifest,
    write_manifest,
)
from service.chat import ChatEncoder
from service.conversation import validate_conversation
from service.encoding import CHAT_TRUNCATION_POLICY_NAME, PairEncoder
from service.model import load_model
from service.onnx_scoring import make_session, score_encoded
from tests.bundle_factory import make_tiny_bundle

FIXTURE = Path(__file__).parent / "fixtures" / "manifest_pre_chat.json"
# plain-text markers: the tiny bundle's MiniLM tokenizer has no chat special tokens
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {{ eos_token }}\n{% endfor %}"
MESSAGES = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
PAIRS = [
    ("How do I bake bread?", "Mix flour and water."),
    ("", ""),
    ("Tell me about the sea. " * 30, "Deep. " * 30),
]


def rewrite(bundle: Path, **changes: object) -> None:
    """Rewrite a bundle's manifest with ``changes`` through `write_manifest` (hashes recomputed)."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    fields = {k: v for k, v in raw.items() if k not in ("format", "format_version", "files")}
    write_manifest(bundle, {**fields, **changes})


def make_chat_bundle(path: Path, pad_token_id: int = 7) -> Path:
    bundle = make_tiny_bundle(path)
    (bundle / CHAT_TEMPLATE_NAME).write_text(TEMPLATE, encoding="utf-8")
    rewrite(
        bundle,
        input_format="chat",
        chat_template={"special_tokens": {"eos_token": "[SEP]", "pad_token": "[PAD]"}},
        truncation={"policy": CHAT_TRUNCATION_POLICY_NAME, "max_length": 128},
        pad_token_id=pad_token_id,
    )
    return bundle


def test_a_chat_bundle_gets_a_chat_encoder_with_its_template_and_pad_id(tmp_path: Path) -> None:
    bundle = load_bundle(make_chat_bundle(tmp_path / "chat"))
    m = bundle.manifest
    assert m.input_format == "chat" and m.files[CHAT_TEMPLATE_NAME] == m.chat_template_sha256
    encoder = bundle.encoder()
    assert isinstance(encoder, ChatEncoder) and encoder.pad_token_id == 7  # the manifest's, not a guess
    assert encoder.template.sha256 == m.chat_template_sha256
    text = encoder.render(validate_conversation(MESSAGES))
    assert text == "[user] Hi? [SEP]\n[assistant] Hello. [SEP]\n"
    assert encoder.encode_one("Hi?", "Hello.") == encoder.encode_conversations([MESSAGES])[0]


def test_a_chat_bundle_passes_the_service_canary(tmp_path: Path) -> None:
    model = load_model(make_chat_bundle(tmp_path / "chat"), "auto", 1)
    assert isinstance(model.encoder, ChatEncoder)


def test_a_chat_manifest_without_its_template_is_refused(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(ManifestError, match="needs chat_template"):
        rewrite(
            bundle, input_format="chat", truncation={"policy": CHAT_TRUNCATION_POLICY_NAME, "max_length": 128}
        )
    (bundle / CHAT_TEMPLATE_NAME).write_text(TEMPLATE)
    with pytest.raises(ManifestError, match="truncates with"):
        rewrite(bundle, input_format="chat", chat_template={})  # still the pair truncation policy
    with pytest.raises(ManifestError, match="only for input_format 'chat'"):
        rewrite(bundle, chat_template={})


def test_a_replaced_template_fails_the_integrity_check(tmp_path: Path) -> None:
    bundle = make_chat_bundle(tmp_path / "chat")
    (bundle / CHAT_TEMPLATE_NAME).write_text(TEMPLATE + "{{ bos_token }}")
    with pytest.raises(IntegrityError, match=CHAT_TEMPLATE_NAME):
        load_bundle(bundle)


def test_a_template_that_does_not_compile_is_refused_at_load(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b")
    (bundle / CHAT_TEMPLATE_NAME).write_text("{% for m in messages %}")
    rewrite(
        bundle,
        input_format="chat",
        chat_template={},
        truncation={"policy": CHAT_TRUNCATION_POLICY_NAME, "max_length": 128},
    )
    with pytest.raises(IntegrityError, match="not a usable chat template"):
        load_bundle(bundle).encoder()


def test_a_manifest_written_before_input_formats_loads_as_pair_and_scores_identically(tmp_path: Path) -> None:
    """The fixture is a manifest.json exactly as the release before this change wrote it (no
    input_format, no chat_template, null heads). Its `files` are replaced by the rebuilt bundle's
    hashes only, since graph bytes may differ with onnx versions; every other field is the fixture's."""
    old_dir, new_dir = make_tiny_bundle(tmp_path / "old"), make_tiny_bundle(tmp_path / "new")
    fixture = json.loads(FIXTURE.read_text())
    assert "input_format" not in fixture and "chat_template" not in fixture
    fixture["files"] = json.loads((old_dir / MANIFEST_NAME).read_text())["files"]
    (old_dir / MANIFEST_NAME).write_text(json.dumps(fixture, indent=2))
    old, new = load_bundle(old_dir), load_bundle(new_dir)
    assert old.manifest.input_format == "pair" and old.manifest.chat_template is None
    assert old.manifest.chat_template_sha256 is None
    assert read_manifest(new_dir).input_format == "pair"
    scores = []
    for bundle in (old, new):
        encoder = bundle.encoder()
        assert isinstance(encoder, PairEncoder) and encoder.pad_token_id == 0
        encoded = encoder.encode([q for q, _ in PAIRS], [a for _, a in PAIRS])
        session = make_session(bundle.model_path("fp32"), 1)
        scores.append(score_encoded(session, bundle.manifest.input_names, encoded, encoder.pad_token_id))
    np.testing.assert_array_equal(scores[0], scores[1])
