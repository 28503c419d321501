"""Conversational preference rows (TRL's formats): loading, validation, skipped-row counts, and the one
encoding path (`batching.encode_pairs`) that reads them as conversations, whichever the encoder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from service.conversation import Message, conversation_to_hh
from service.encoding import PairEncoder, TruncationPolicy
from tests.service.chat_helpers import CHATML, STRICT, chat_encoder, tiny_bpe
from training.reward.batching import encode_pairs
from training.reward.data import DataError, PreferencePair, load_pairs, split_pairs
from training.reward.model import default_base_model, tokenizer_json_path

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "How do I bake bread?"}
EARLIER = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _write(path: Path, rows: list[Any]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def implicit(prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    return {"chosen": [*prompt, _assistant(chosen)], "rejected": [*prompt, _assistant(rejected)]}


def explicit(prompt: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


def test_implicit_prompt_rows_keep_their_messages_and_count_what_they_skip(tmp_path: Path) -> None:
    rows = [
        implicit([SYSTEM, *EARLIER, USER], " Mix and bake. ", "No."),
        implicit([USER], "Same.", "Same."),  # no preference
        {  # the two conversations differ before their answers: hh's mismatched question
            "chosen": [USER, _assistant("a")],
            "rejected": [{"role": "user", "content": "Other?"}, _assistant("b")],
        },
    ]
    report = load_pairs(_write(tmp_path / "c.jsonl", rows))
    prompt = (Message("system", "You are terse."), Message("user", "Hi."), Message("assistant", "Hello."),
              Message("user", "How do I bake bread?"))  # fmt: skip
    # the answers as written; the question is the prompt as hh turns (the policy's prompt text)
    assert report.pairs == [
        PreferencePair(
            "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant:",
            " Mix and bake. ",
            "No.",
            prompt,
        )
    ]
    assert report.skipped == 2
    assert report.skipped_reasons == {"identical_answers": 1, "question_mismatch": 1}
    assert report.pairs[0].conversation("x")[-1] == Message("assistant", "x")


def test_explicit_prompt_rows_gz_and_completions_that_share_their_first_messages(tmp_path: Path) -> None:
    shared = [_assistant("Which bread?"), {"role": "user", "content": "Rye."}]
    rows = [
        explicit([SYSTEM, USER], "Knead it.", "Buy it."),
        {
            "prompt": [USER],
            "chosen": [*shared, _assistant("Sour rye.")],
            "rejected": [*shared, _assistant("?")],
        },
        {"prompt": [USER], "chosen": [_assistant("A"), USER, _assistant("B")], "rejected": [_assistant("C")]},
    ]
    report = load_pairs(_write(tmp_path / "e.jsonl.gz", rows))
    assert [(p.prompt, p.chosen, p.rejected) for p in report.pairs] == [
        ((Message("system", "You are terse."), Message("user", "How do I bake bread?")), "Knead it.", "Buy it."),
        ((Message("user", "How do I bake bread?"), Message("assistant", "Which bread?"), Message("user", "Rye.")),
         "Sour rye.", "?"),
    ]  # fmt: skip
    assert report.skipped_reasons == {"question_mismatch": 1}


@pytest.mark.parametrize("fmt", [implicit, explicit])
def test_saved_dataset_dir_of_message_lists(tmp_path: Path, fmt: Any) -> None:
    import datasets

    rows = [fmt([SYSTEM, USER], f"yes {i}", f"no {i}") for i in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    assert load_pairs(tmp_path / "ds").pairs == load_pairs(_write(tmp_path / "same.jsonl", rows)).pairs


BAD_ROWS = [  # (a second row after a valid first one of its format, the error it must give)
    (implicit([{"role": "bot", "content": "?"}], "a", "b"), r"row\.jsonl:2: 'chosen': message 0: unknown role 'bot'"),
    ({"chosen": [USER], "rejected": [USER]}, r"row\.jsonl:2: 'chosen': the last message \(message 0\) is from 'user'"),
    ({"chosen": [], "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'chosen': the conversation is empty"),
    ({"chosen": [USER, {"role": "assistant", "content": 3}], "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'chosen': message 1: content must be a string"),
    ({"chosen": [SYSTEM, SYSTEM, _assistant("a")], "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'chosen': message 1: a system message may only come first"),
    ({"chosen": "text", "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'chosen' must be a list of messages"),
    (explicit([USER], "a", "b"), r"row\.jsonl:2: has a 'prompt', but the first record has none"),
]  # fmt: skip
BAD_EXPLICIT_ROWS = [
    ({"prompt": [USER], "chosen": [], "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'chosen' is empty"),
    ({"prompt": [USER], "chosen": [_assistant("a")], "rejected": [USER]},
     r"row\.jsonl:2: 'prompt' \+ 'rejected': the last message \(message 1\) is from 'user'"),
    ({"prompt": [{"role": "tool", "content": "x"}], "chosen": [_assistant("a")], "rejected": [_assistant("b")]},
     r"row\.jsonl:2: 'prompt' \+ 'chosen': message 0: unknown role 'tool'"),
    ({"prompt": "How?", "chosen": [_assistant("a")], "rejected": [_assistant("b")]}, r"row\.jsonl:2: 'prompt' must be a list"),
    ({"chosen": [_assistant("a")], "rejected": [_assistant("b")]}, r"row\.jsonl:2: missing key\(s\) \['prompt'\]"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "error"), BAD_ROWS)
def test_a_bad_implicit_row_is_an_error_naming_its_line(tmp_path: Path, row: Any, error: str) -> None:
    with pytest.raises(DataError, match=error):
        load_pairs(_write(tmp_path / "row.jsonl", [implicit([USER], "a", "b"), row]))


@pytest.mark.parametrize(("row", "error"), BAD_EXPLICIT_ROWS)
def test_a_bad_explicit_prompt_row_is_an_error_naming_its_line(tmp_path: Path, row: Any, error: str) -> None:
    with pytest.raises(DataError, match=error):
        load_pairs(_write(tmp_path / "row.jsonl", [explicit([USER], "a", "b"), row]))


def test_the_split_tells_apart_pairs_that_differ_only_in_their_system_message(tmp_path: Path) -> None:
    def persona_pairs(offset: int) -> list[PreferencePair]:
        rows = [
            implicit([{"role": "system", "content": f"Persona {offset + i}."}, USER], "a", "b")
            for i in range(40)
        ]
        return load_pairs(_write(tmp_path / f"s{offset}.jsonl", rows)).pairs

    first, second = persona_pairs(0), persona_pairs(100)
    assert {p.question for p in first + second} == {first[0].question}  # hh drops the system message ...
    val_first, val_second = split_pairs(first, 0.5, seed=0)[1], split_pairs(second, 0.5, seed=0)[1]
    assert len(val_first) == 20 and split_pairs(first, 0.5, seed=0)[1] == val_first
    # ... the split's content hash does not: other personas, other rows held out
    assert [first.index(p) for p in val_first] != [second.index(p) for p in val_second]


# -- encoding: one path, each encoder reading conversations as the service does ------------------------


def _pairs(tmp_path: Path) -> list[PreferencePair]:
    rows = [implicit([SYSTEM, *EARLIER, USER], " Mix flour, water, salt and yeast. ", "No."),
            implicit([USER], "Bake it hot.", "I am fine.")]  # fmt: skip
    return load_pairs(_write(tmp_path / "p.jsonl", rows)).pairs


def test_a_chat_encoder_renders_the_whole_conversation_system_message_included(tmp_path: Path) -> None:
    encoder = chat_encoder(tiny_bpe(), CHATML)
    pairs = _pairs(tmp_path)
    text = PreferencePair("How do I bake bread?", "Bake it hot.", "No.")  # a text pair beside them
    chosen, rejected = encode_pairs(encoder, [*pairs, text])
    # the service's encodings of the same conversations (what /score computes for {"messages": ...})
    served = encoder.encode_conversations([[m.as_dict() for m in p.conversation(p.chosen)] for p in pairs])
    assert chosen[:2] == served  # ids, truncation and answer_tokens (the length correction's unit)
    assert rejected[:2] == encoder.encode_conversations([p.conversation(p.rejected) for p in pairs])
    assert chosen[2] == encoder.encode_one(text.question, text.chosen)
    rendered = encoder.tokenizer.decode(chosen[0].input_ids, skip_special_tokens=False)
    assert "system\nYou are terse." in rendered and "You are a helpful assistant" not in rendered
    assert rejected[0].answer_tokens < chosen[0].answer_tokens  # counts the final answer: "No." is short


@pytest.mark.parametrize("vocabulary", ["minilm", "byte-bpe"])
def test_a_pair_encoder_reads_them_as_hh_turns_and_text_pairs_byte_for_byte(
    tmp_path: Path, vocabulary: str
) -> None:
    # a byte-level BPE sees the spaces hh strips around an answer; WordPiece (MiniLM) does not
    tokenizer = (
        Tokenizer.from_file(str(tokenizer_json_path(default_base_model())))
        if vocabulary == "minilm"
        else tiny_bpe()
    )
    encoder = PairEncoder(tokenizer, TruncationPolicy(128, 8))
    pairs = _pairs(tmp_path)
    chosen, rejected = encode_pairs(encoder, pairs)
    for pair, encoded_chosen, encoded_rejected in zip(pairs, chosen, rejected, strict=True):
        for answer, encoded in ((pair.chosen, encoded_chosen), (pair.rejected, encoded_rejected)):
            question, hh_answer = conversation_to_hh(pair.conversation(answer))  # the service's rule
            assert encoded == encoder.encode_one(question, hh_answer)
    text = PreferencePair("\n\nHuman: Hi?\n\nAssistant:", "  Hello. ", " Go.")  # unstripped, as before
    assert encode_pairs(encoder, [text]) == ([encoder.encode_one(text.question, text.chosen)],
                                             [encoder.encode_one(text.question, text.rejected)])  # fmt: skip


def test_a_conversation_the_template_refuses_is_a_data_error_naming_the_pair(tmp_path: Path) -> None:
    rows = [implicit([USER], "a", "b"), implicit([USER, USER], "a", "b")]  # STRICT demands alternation
    pairs = load_pairs(_write(tmp_path / "r.jsonl", rows)).pairs
    with pytest.raises(
        DataError, match=r"pair 1 \(conversation opening 'How do I bake bread\?'\).*alternate"
    ):
        encode_pairs(chat_encoder(tiny_bpe(), STRICT), pairs)
