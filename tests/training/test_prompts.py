"""Prompts: hh dialogue <-> chat messages, prompts files, and held-out questions the RM never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.policy.errors import PromptError
from training.policy.prompts import (
    Prompt,
    build_prompt_sets,
    heldout_questions,
    hh_to_messages,
    load_prompts_file,
    messages_to_hh,
    prompt_from_hh,
)
from training.reward.config import RewardConfig
from training.reward.data import load_pairs, split_pairs

DIALOGUE = "\n\nHuman: How do I bake bread?\n\nAssistant: Use flour.\n\nHuman: And then?\n\nAssistant:"


def test_hh_dialogue_becomes_chat_turns_and_back() -> None:
    messages = hh_to_messages(DIALOGUE)
    assert messages == (("user", "How do I bake bread?"), ("assistant", "Use flour."), ("user", "And then?"))
    assert messages_to_hh(messages) == DIALOGUE
    prompt = prompt_from_hh(DIALOGUE)
    assert prompt.question == DIALOGUE  # the RM gets the raw hh text it trained on
    assert prompt.chat()[-1] == {"role": "user", "content": "And then?"}


@pytest.mark.parametrize("bad", ["no turns at all", "\n\nHuman: hi\n\nAssistant: hello", "x\n\nHuman: hi"])
def test_malformed_dialogues_raise(bad: str) -> None:
    with pytest.raises(PromptError):
        hh_to_messages(bad)


def test_prompts_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "How do I bake bread?"},
        {"question": DIALOGUE},
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    plain, hh, chat = load_prompts_file(path)
    assert plain.messages == (("user", "How do I bake bread?"),)
    assert plain.question == "\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert hh.question == DIALOGUE and len(hh.messages) == 3
    assert chat.messages[0] == ("system", "Be kind.") and chat.question == "\n\nHuman: Hi\n\nAssistant:"


@pytest.mark.parametrize(
    ("line", "match"),
    [("{not json", "invalid JSON"), ('{"text": "x"}', "needs a non-empty"), ('[1, 2]', "expected an object"),
     ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "last chat")],
)  # fmt: skip
def test_prompts_file_errors_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(PromptError, match=match) as info:
        load_prompts_file(path)
    assert f"{path}:2" in str(info.value)
    with pytest.raises(PromptError, match="no such prompts file"):
        load_prompts_file(tmp_path / "missing.jsonl")


def test_default_prompts_are_questions_the_reward_model_did_not_train_on() -> None:
    defaults = RewardConfig()
    train, val = split_pairs(load_pairs().pairs, defaults.val_fraction, defaults.seed)
    held_out = heldout_questions()
    train_questions = {p.question for p in train}
    assert held_out and not train_questions.intersection(held_out)
    assert set(held_out) <= {p.question for p in val}
    assert len(held_out) == len(set(held_out))
    for question in held_out[:50]:
        assert question.endswith("\n\nAssistant:")
        prompt_from_hh(question)  # every held-out question converts to chat turns


def test_prompt_sets_filter_long_prompts_and_hold_out_eval() -> None:
    prompts = [Prompt((("user", "w " * n),), f"q{n}") for n in range(1, 21)]
    sets = build_prompt_sets(
        prompts, lambda p: len(p.messages[0][1].split()), max_tokens=15, n_eval=4, seed=0
    )
    assert sets.skipped_too_long == 5
    assert len(sets.eval) == 4 and len(sets.train) == 11
    assert not {p.question for p in sets.eval} & {p.question for p in sets.train}
    again = build_prompt_sets(
        prompts, lambda p: len(p.messages[0][1].split()), max_tokens=15, n_eval=4, seed=0
    )
    assert again.eval == sets.eval  # deterministic
    with pytest.raises(PromptError, match="longer than max_prompt_tokens"):
        build_prompt_sets(prompts, lambda p: 99, max_tokens=15, n_eval=4, seed=0)


def test_reward_run_dir_gives_its_own_validation_split(tmp_path: Path) -> None:
    """A run trained with another seed / val_fraction holds out other questions: the policy uses those."""
    from training.reward.config import CONFIG_NAME

    config = RewardConfig(val_fraction=0.2, seed=5)
    (tmp_path / "final").mkdir()
    config.save(tmp_path / "final" / CONFIG_NAME)
    train, val = split_pairs(load_pairs().pairs, 0.2, 5)
    held_out = heldout_questions(tmp_path)
    assert set(held_out) <= {p.question for p in val}
    assert not {p.question for p in train}.intersection(held_out)
    assert set(held_out) != set(heldout_questions())
    with pytest.raises(PromptError):
        heldout_questions(tmp_path / "missing")
