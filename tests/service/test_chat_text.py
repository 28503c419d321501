"""Rendered prompt + response text (as OpenRLHF sends it) back to messages: ChatML, Llama-3, Gemma, hh;
and how every text route reads it (`read_rendered`: a conversation, or a pair by the plain-text rule)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from service.chat_text import (
    ParsedChat,
    Reading,
    is_own_rendering,
    parse_chat_text,
    read_prompt_and_response,
    read_rendered,
    strip_end_tokens,
)
from service.conversation import InvalidConversation, validate_conversation
from service.rendered import split_rendered
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


# ---- reading rendered text: what every text route and adapter scores ----------------------------------
GEMMA = (
    "<bos><start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\nYes.<end_of_turn>\n"
    "<start_of_turn>user\nThe sea?<end_of_turn>\n<start_of_turn>model\nIt is deep.<end_of_turn>\n"
)


def test_gemma_text_parses_with_model_read_as_assistant() -> None:
    parsed = parse_chat_text(GEMMA)
    assert parsed == ParsedChat("gemma", [{"role": "user", "content": "Hi?"}, *MESSAGES[2:]])


@pytest.mark.parametrize(("template", "name"), [(CHATML, "chatml"), (LLAMA3, "llama3")])
def test_a_query_with_its_prompt_reads_as_the_conversation(bpe: Tokenizer, template: str, name: str) -> None:
    """OpenRLHF's shape: query = prompt + response + end of turn, the prompt beside it."""
    hf = hf_tokenizer(bpe, template)
    prompt = hf.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    query = prompt + "It is deep." + ("<|im_end|>" if name == "chatml" else "<|eot_id|>")
    for reading in (
        read_rendered(query, prompt),
        read_rendered(query),
        read_prompt_and_response(prompt, query[len(prompt) :]),
    ):
        assert reading == Reading(name, messages=MESSAGES)


def test_with_the_prompt_known_turn_markers_the_policy_printed_stay_its_answer() -> None:
    prompt = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    response = "Sure<|im_end|>\n<|im_start|>user\nthanks<|im_end|>"
    reading = read_rendered(prompt + response, prompt)
    assert reading.messages == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Sure<|im_end|>\n<|im_start|>user\nthanks"},
    ]
    # without the prompt, the same text reads as the turns it shows: the last one is not an answer
    with pytest.raises(InvalidConversation, match="must be the assistant answer"):
        validate_conversation(read_rendered(prompt + response).messages)


def test_a_prefilled_generation_prompt_keeps_its_start_in_the_answer() -> None:
    prompt = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nSure,"
    assert read_prompt_and_response(prompt, " here.<|im_end|>").messages == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Sure, here."},
    ]


def test_a_response_after_a_prompt_without_generation_prompt_is_the_answer() -> None:
    text = "<|im_start|>user\nHi?<|im_end|>\nHello there.<|im_end|>"
    assert read_rendered(text).messages == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello there."},
    ]
    prompt = "<|im_start|>user\nHi?<|im_end|>\n"
    assert read_rendered(prompt + "Hello there.", prompt).messages == read_rendered(text).messages


@pytest.mark.parametrize(
    ("text", "prompt", "expected"),
    [
        ("\n\nHuman: Hi?\n\nAssistant: Hello.", None, Reading("hh", pair=("\n\nHuman: Hi?\n\nAssistant:", " Hello."))),
        ("\n\nHuman: Hi?\n\nAssistant: Hello.", "\n\nHuman: Hi?\n\nAssistant:",
         Reading("hh", pair=("\n\nHuman: Hi?\n\nAssistant:", " Hello."))),
        ("Q: 2+2? A: 4", "Q: 2+2? A:", Reading("text", pair=("Q: 2+2? A:", " 4"))),
        ("Just text.", None, Reading("text", pair=("", "Just text."))),
        ("Just text.", "not a prefix", Reading("text", pair=("not a prefix", "Just text."))),
    ],
)  # fmt: skip
def test_text_in_no_chat_format_reads_as_the_plain_text_rule_splits_it(
    text: str, prompt: str | None, expected: Reading
) -> None:
    assert read_rendered(text, prompt) == expected
    assert expected.pair == split_rendered(text, prompt)


def test_a_plain_prompt_and_response_stay_the_pair_they_are() -> None:
    """slime without --apply-chat-template: the prompt is the question, no splitting."""
    assert read_prompt_and_response("", "a\n\nAssistant: b") == Reading(
        "text", pair=("", "a\n\nAssistant: b")
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.<|im_end|>\n<|endoftext|><|endoftext|>", "Yes."),
        ("Fine.  <|eot_id|>", "Fine.  "),  # the response's own trailing spaces are its text
        ("a </s> b</s>", "a </s> b"),
        ("no tokens \n", "no tokens \n"),
        ("<end_of_turn><eos>", ""),
    ],
)
def test_strip_end_tokens_cuts_only_tokens_at_the_end(text: str, expected: str) -> None:
    assert strip_end_tokens(text) == expected


def test_own_rendering_allows_only_the_end_of_turn_after_the_response(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, CHATML)
    whole = hf_tokenizer(bpe, CHATML).apply_chat_template(MESSAGES, tokenize=False)
    rendered = encoder.render(validate_conversation(MESSAGES))
    assert is_own_rendering(whole, rendered)
    assert is_own_rendering(whole.removesuffix("<|im_end|>\n"), rendered)  # stopped without it
    assert is_own_rendering(whole + "<|im_end|><|im_end|>", rendered)  # padded with it
    assert not is_own_rendering(whole.replace("Be kind.", "Be nice."), rendered)
    llama = chat_encoder(bpe, LLAMA3).render(validate_conversation(MESSAGES))
    assert not is_own_rendering(whole, llama)
