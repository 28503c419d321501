"""Our jinja2 rendering and ids == transformers' `apply_chat_template`, on hand-written templates in
the styles of Llama-3, Qwen2/ChatML, Mistral (system + raise_exception) and one using every extra of
transformers' environment, with a byte-level BPE tokenizer built in the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from tokenizers import Tokenizer

from service.chat_template import ChatTemplate
from service.conversation import TemplateRenderError, validate_conversation
from tests.service.chat_helpers import SPECIAL_TOKENS, TEMPLATES, chat_encoder, hf_tokenizer, tiny_bpe

CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "single": [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour."},
    ],
    "system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "  I am fine, thank you.\n"},
    ],
    "multi": [
        {"role": "user", "content": "Hello there, how are you?"},
        {"role": "assistant", "content": "I am fine."},
        {"role": "user", "content": "The sea?\n\nIs it deep?"},
        {"role": "assistant", "content": "It is large, deep and salty. é ☃ <b>"},
    ],
    "empty-answer": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    "special-in-text": [
        {"role": "user", "content": "say <|im_end|> please"},
        {"role": "assistant", "content": "<|im_end|></s> done"},
    ],
}


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return tiny_bpe()


@pytest.mark.parametrize("template_name", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation_name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_and_ids_equal_transformers(
    bpe: Tokenizer, template_name: str, conversation_name: str, add_generation_prompt: bool
) -> None:
    template, messages = TEMPLATES[template_name], CONVERSATIONS[conversation_name]
    hf = hf_tokenizer(bpe, template)
    expected: Any = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ours = ChatTemplate(template, SPECIAL_TOKENS).render(
        validate_conversation(messages), add_generation_prompt
    )
    assert ours == expected
    if not add_generation_prompt:  # the encoder scores finished conversations
        expected_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
        encoded = chat_encoder(bpe, template).encode_conversations([messages])[0]
        assert encoded.input_ids == list(expected_ids)
        assert not encoded.truncated


def test_special_tokens_are_the_tokenizers_named_ones(bpe: Tokenizer) -> None:
    """The bundle stores `special_tokens_map`: exactly the variables transformers renders with."""
    assert hf_tokenizer(bpe, TEMPLATES["chatml"]).special_tokens_map == SPECIAL_TOKENS


def test_raise_exception_refuses_like_transformers(bpe: Tokenizer) -> None:
    messages = [{"role": "assistant", "content": "first"}, {"role": "assistant", "content": "second"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="must alternate"):
        hf_tokenizer(bpe, TEMPLATES["strict"]).apply_chat_template(messages, tokenize=False)
    with pytest.raises(TemplateRenderError, match="must alternate"):
        ChatTemplate(TEMPLATES["strict"], SPECIAL_TOKENS).render(validate_conversation(messages))


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("{% for m in messages %}{{ m.content }", "does not compile"),  # syntax error
        ("{{ messages[0].content.__class__.__mro__ }}", "refused"),  # the sandbox
        ("{% set ns = namespace(_x=1) %}{{ ns }}", "refused"),  # underscore names on a namespace
        ("{{ messages[5].content + 'x' }}", "refused"),  # undefined used in an operation
        ("{{ messages[0].content | int(1, 2, 3) }}", "failed"),  # a Python error inside a filter
    ],
)
def test_a_template_that_fails_raises_a_typed_error(source: str, why: str) -> None:
    conversation = validate_conversation([{"role": "assistant", "content": "hi"}])
    with pytest.raises(TemplateRenderError, match=why):
        ChatTemplate(source, SPECIAL_TOKENS).render(conversation)


def test_special_token_names_may_not_shadow_render_variables() -> None:
    with pytest.raises(ValueError, match="messages"):
        ChatTemplate("{{ messages }}", {"messages": "x"})


def test_template_hash_is_the_sha256_of_its_source() -> None:
    import hashlib

    template = ChatTemplate(TEMPLATES["chatml"], SPECIAL_TOKENS)
    assert template.sha256 == hashlib.sha256(TEMPLATES["chatml"].encode()).hexdigest()


def test_read_chat_template_from_a_saved_tokenizer(bpe: Tokenizer, tmp_path: Path) -> None:
    from service.chat_template import read_chat_template

    hf = hf_tokenizer(bpe, TEMPLATES["llama3"])
    hf.save_pretrained(tmp_path)
    template = read_chat_template(tmp_path)
    assert template is not None
    assert template.source == TEMPLATES["llama3"] and template.special_tokens == hf.special_tokens_map
    assert read_chat_template(tmp_path / "nothing-here") is None


def test_read_chat_template_from_an_older_tokenizer_config(tmp_path: Path) -> None:
    """Before chat_template.jinja existed the template sat in tokenizer_config.json, tokens as objects."""
    import json

    from service.chat_template import read_chat_template

    config = {"chat_template": TEMPLATES["chatml"], "eos_token": {"__type": "AddedToken", "content": "</s>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = read_chat_template(tmp_path)
    assert template is not None and template.special_tokens == {"eos_token": "</s>"}
