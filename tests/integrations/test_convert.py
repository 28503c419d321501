"""integrations.convert: every form a trainer holds becomes the hh pair the reward model was trained on,
the same pair the policy trainer and the service's rendered-text routes make of the same dialogue."""

from __future__ import annotations

import pytest

from integrations.convert import (
    split_conversation,
    split_query,
    strip_end_tokens,
    to_answer,
    to_pair,
    to_question,
)
from service.rendered import split_rendered
from training.data import split_hh_dialogue
from training.policy.prompts import prompt_from_hh, prompt_from_text

HH_Q = "\n\nHuman: How do I bake bread?\n\nAssistant: With an oven.\n\nHuman: And yeast?\n\nAssistant:"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "With an oven."},
    {"role": "user", "content": "And yeast?"},
]
# the same dialogue as three chat templates render it (with the generation prompt at the end)
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do I bake bread?<|im_end|>\n"
    "<|im_start|>assistant\nWith an oven.<|im_end|>\n<|im_start|>user\nAnd yeast?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHow do I bake bread?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nWith an oven.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd yeast?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
GEMMA = (
    "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\nWith an oven."
    "<end_of_turn>\n<start_of_turn>user\nAnd yeast?<end_of_turn>\n<start_of_turn>model\n"
)


@pytest.mark.parametrize(
    "prompt", [HH_Q, MESSAGES, CHATML, LLAMA3, GEMMA], ids=["hh", "messages", "chatml", "llama3", "gemma"]
)
def test_every_prompt_form_becomes_the_same_hh_question(prompt: object) -> None:
    assert to_question(prompt) == HH_Q  # type: ignore[arg-type]


def test_the_question_is_the_one_the_policy_trainer_sends() -> None:
    """training.policy.prompts renders the policy's prompts for the RM; the adapters must agree with it."""
    for text in ["How do I bake bread?", HH_Q]:
        assert to_question(text) == prompt_from_text(text).question
    policy = prompt_from_hh(HH_Q)
    assert to_question(policy.chat()) == policy.question


def test_plain_and_unmarked_text() -> None:
    assert to_question("  Hi there ") == "\n\nHuman: Hi there\n\nAssistant:"
    assert to_question("Human: Hi") == "\n\nHuman: Hi\n\nAssistant:"  # hh without its leading blank line
    assert to_question(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}]
    ) == ("\n\nHuman: Hi\n\nAssistant:")


@pytest.mark.parametrize(
    "completion",
    ["Use yeast.", " Use yeast.  ", "Use yeast.<|im_end|>\n", "Use yeast.<|eot_id|>", "Use yeast.<end_of_turn></s>",
     [{"role": "assistant", "content": "Use yeast."}], [{"content": "Use yeast. "}]],
)  # fmt: skip
def test_every_completion_form_becomes_the_answer_with_hh_leading_space(completion: object) -> None:
    assert to_answer(completion) == " Use yeast."  # type: ignore[arg-type]


def test_end_tokens_are_cut_only_at_the_end() -> None:
    assert strip_end_tokens("a </s> b</s>") == "a </s> b"


@pytest.mark.parametrize("template", [CHATML, LLAMA3, GEMMA], ids=["chatml", "llama3", "gemma"])
def test_a_templated_conversation_splits_at_its_last_assistant_turn(template: str) -> None:
    end = {
        "<|im_start|>": "<|im_end|>",
        "<|start_header_id|>": "<|eot_id|>",
        "<start_of_turn>": "<end_of_turn>",
    }
    marker = next(m for m in end if m in template)
    assert split_conversation(template + "Use yeast." + end[marker]) == (HH_Q, " Use yeast.")
    assert split_query(template + "Use yeast." + end[marker], template) == (HH_Q, " Use yeast.")


def test_hh_text_splits_as_training_and_the_service_split_it() -> None:
    dialogue = HH_Q + " Use yeast.  "
    assert split_conversation(dialogue) == split_hh_dialogue(dialogue) == (HH_Q, " Use yeast.  ")
    # OpenRLHF's query: whatever the service's /get_reward makes of it, the adapter makes of it too
    for query, prompt in [(dialogue, HH_Q), (dialogue, None), ("no markers", "other"), ("just text", None)]:
        assert split_query(query, prompt) == split_rendered(query, prompt)


def test_messages_conversation_and_one_without_an_answer() -> None:
    conversation = [*MESSAGES, {"role": "assistant", "content": "Use yeast."}]
    assert split_conversation(conversation) == (HH_Q, " Use yeast.")
    assert split_conversation(MESSAGES) == (HH_Q, " ")  # nothing answered yet: an empty answer
    assert to_pair(MESSAGES, "Use yeast.") == (HH_Q, " Use yeast.")
