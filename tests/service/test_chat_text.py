"""Rendered prompt + response text (as OpenRLHF sends it) back to messages: ChatML, Llama-3, hh."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from service.chat_text import ParsedChat, parse_chat_text
from service.conversation import InvalidConversation, validate_conversation
from tests.service.chat_helpers import CHATML, LLAMA3, chat_encoder, hf_tokenizer, tiny_bpe

MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi?\n\nAre you there?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "The sea?"},
    {"role": "assistant", "content": "It is deep."},
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return tiny_bpe()


@pytest.mark.parametrize(("template", "name"), [(CHATML, "chatml"), (LLAMA3, "llama3")])
@pytest.mark.parametrize("ending", ["", "<|endoftext|><|endoftext|>", "\n<|endoftext|>"])
def test_prompt_plus_response_parses_back_to_the_messages(
    bpe: Tokenizer, template: str, name: str, ending: str
) -> None:
    """The prompt rendered by transformers with a generation prompt, then the response as a policy
    decodes it (its end-of-turn token, maybe padding after it)."""
    hf = hf_tokenizer(bpe, template)
    prompt = hf.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    end_of_turn = "<|im_end|>" if name == "chatml" else "<|eot_id|>"
    parsed = parse_chat_text(prompt + MESSAGES[-1]["content"] + end_of_turn + ending)
    assert parsed == ParsedChat(name, MESSAGES)


@pytest.mark.parametrize(("template", "name"), [(CHATML, "chatml"), (LLAMA3, "llama3")])
def test_a_response_cut_before_its_end_of_turn_parses_too(bpe: Tokenizer, template: str, name: str) -> None:
    hf = hf_tokenizer(bpe, template)
    prompt = hf.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    assert parse_chat_text(prompt + "It is de") == ParsedChat(
        name, [*MESSAGES[:-1], {"role": "assistant", "content": "It is de"}]
    )


def test_rerendering_with_the_same_template_gives_the_text_back(bpe: Tokenizer) -> None:
    """The policy's template is the reward model's own: the text is scored as it came."""
    encoder = chat_encoder(bpe, CHATML)
    text = hf_tokenizer(bpe, CHATML).apply_chat_template(MESSAGES, tokenize=False)
    parsed = parse_chat_text(text)
    assert parsed is not None
    assert encoder.render(validate_conversation(parsed.messages)) == text


def test_hh_text_parses_to_turns() -> None:
    text = "\n\nHuman: Hi?\n\nAssistant: Yes.\n\nHuman: The sea?\n\nAssistant: It is deep."
    assert parse_chat_text(text) == ParsedChat("hh", [{"role": "user", "content": "Hi?"}, *MESSAGES[2:]])


@pytest.mark.parametrize("text", ["Just some text.", "", "<|start_header_id|", "Human: hi"])
def test_unrecognised_text_is_none(text: str) -> None:
    assert parse_chat_text(text) is None


def test_an_unknown_role_is_left_to_validation() -> None:
    parsed = parse_chat_text("<|im_start|>tool\n{}<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n")
    assert parsed is not None and parsed.messages[0]["role"] == "tool"
    with pytest.raises(InvalidConversation, match="unknown role 'tool'"):
        validate_conversation(parsed.messages)


def test_a_response_padded_with_its_end_of_turn_token_keeps_only_its_text() -> None:
    """SmolLM2 pads with <|im_end|>; a marker inside the response is part of its text."""
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nsay <|im_end|> ok<|im_end|><|im_end|><|im_end|>"
    parsed = parse_chat_text(text)
    assert parsed is not None and parsed.messages[-1] == {"role": "assistant", "content": "say <|im_end|> ok"}
