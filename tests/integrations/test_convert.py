"""integrations.convert: every form a trainer holds becomes the hh pair the reward model was trained on,
the same pair the policy trainer and the service's rendered-text routes make of the same dialogue."""

from __future__ import annotations

import pytest

from integrations.convert import (
    split_conversation,
    split_conversation_item,
    split_conversation_messages,
    split_query,
    split_query_item,
    strip_end_tokens,
    to_answer,
    to_item,
    to_messages,
    to_pair,
    to_question,
)
from service.chat_text import read_rendered
from service.conversation import conversation_to_hh, pair_to_conversation, validate_conversation
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


# ---- one reader for the routes and the adapters ----------------------------------------------------------
AGREEMENT = [
    (CHATML + "Use yeast.<|im_end|>", CHATML),
    (CHATML + "Use yeast.<|im_end|>", None),
    (LLAMA3 + "Use yeast.<|eot_id|>", LLAMA3),
    (GEMMA + "Use yeast.<end_of_turn>", None),
    (CHATML + "Use yeast.", CHATML),  # cut before its end of turn
    (HH_Q + " Use yeast.", HH_Q),
    (HH_Q + " Use yeast.", None),
    ("Q: bread? A: yeast", "Q: bread? A:"),
    ("just text", None),
]


@pytest.mark.parametrize(("query", "prompt"), AGREEMENT)
def test_split_query_is_what_the_service_routes_read(query: str, prompt: str | None) -> None:
    """/get_reward reads `query` with service.chat_text and a pair bundle renders the conversation
    with service.conversation.conversation_to_hh: the adapter's pair is exactly that pair."""
    reading = read_rendered(query, prompt)
    if reading.messages is not None:
        service_pair = conversation_to_hh(validate_conversation(reading.messages))
    else:
        service_pair = reading.pair
    assert split_query(query, prompt) == service_pair
    if prompt is not None and reading.format != "text":  # a plain prompt: the adapters make it a user turn
        assert to_pair(prompt, query[len(prompt) :]) == service_pair  # slime: prompt and response apart


def test_roles_hh_cannot_hold_are_dropped_here_and_refused_by_the_routes() -> None:
    """An adapter must hand its trainer a reward, so it drops a `tool` turn; the service's routes
    answer the same text with a 422 naming the role (tests/reliability/test_bad_inputs.py)."""
    text = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>tool\n{}<|im_end|>\n<|im_start|>assistant\nOk.<|im_end|>"
    assert split_conversation(text) == ("\n\nHuman: Hi?\n\nAssistant:", " Ok.")


# ---- a `chat` bundle: the conversation itself ------------------------------------------------------------
ANSWERED = [*MESSAGES, {"role": "assistant", "content": "Use yeast."}]
NO_SYSTEM = ANSWERED[1:]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [(MESSAGES, ANSWERED), (CHATML, ANSWERED), (LLAMA3, ANSWERED), (GEMMA, NO_SYSTEM), (HH_Q, NO_SYSTEM)],
    ids=["messages", "chatml", "llama3", "gemma", "hh"],
)
def test_every_prompt_form_becomes_the_conversation_with_its_system_message(
    prompt: object, expected: list[dict[str, str]]
) -> None:
    """Gemma and hh text have no system turn to keep; the others keep theirs."""
    for completion in ("Use yeast.<|im_end|>", [{"role": "assistant", "content": "Use yeast."}]):
        item = to_item(prompt, completion, "chat")  # type: ignore[arg-type]
        assert item == {"messages": expected}
        validate_conversation(item["messages"])  # type: ignore[index]
    assert to_item(prompt, "Use yeast.", "pair") == to_pair(prompt, "Use yeast.")  # type: ignore[arg-type]


def test_contents_are_kept_as_written() -> None:
    """hh text strips every turn; a conversation keeps what the policy was given and wrote."""
    messages = [{"role": "user", "content": "  Hi?\n"}, {"role": "assistant", "content": " Hello there. "}]
    assert to_messages(messages[:1], " Hello there. ") == {"messages": messages}
    assert to_messages("  Hi?\n", " Hello there. <|im_end|>") == {
        "messages": messages
    }  # plain text: a user turn
    assert split_conversation_messages(messages) == {"messages": messages}
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}]
    assert to_messages(parts, "Yes")["messages"][0] == {"role": "user", "content": "Hi"}


def test_turns_a_conversation_cannot_hold_are_dropped() -> None:
    """tool turns and a system message after the first turn would be a 422 on the routes; an adapter
    drops them and scores the rest. A conversation without its answer gets an empty one."""
    messages = [
        {"role": "user", "content": "Hi?"},
        {"role": "system", "content": "Late."},
        {"role": "tool", "content": "{}"},
        {"content": "No role: the user's."},
    ]
    item = split_conversation_messages(messages)
    assert item == {"messages": [{"role": "user", "content": "Hi?"}, {"role": "user", "content": "No role: the user's."},
                                 {"role": "assistant", "content": ""}]}  # fmt: skip
    validate_conversation(item["messages"])


@pytest.mark.parametrize(("query", "prompt"), AGREEMENT)
def test_the_conversation_is_what_the_service_routes_read(query: str, prompt: str | None) -> None:
    """For a chat bundle a route scores the messages it reads, or a pair as a chat bundle reads one
    (service.conversation.pair_to_conversation): the adapter's conversation is exactly that."""
    reading = read_rendered(query, prompt)
    if reading.messages is not None:
        service_turns = validate_conversation(reading.messages)
    else:
        assert reading.pair is not None
        service_turns = pair_to_conversation(*reading.pair)
    expected = {"messages": [turn.as_dict() for turn in service_turns]}
    assert split_query_item(query, prompt, "chat") == expected
    if prompt is None:
        assert split_conversation_item(query, "chat") == expected  # /classify's reading
    elif reading.format != "text":
        assert to_item(prompt, query[len(prompt) :], "chat") == expected  # slime: prompt and response apart
