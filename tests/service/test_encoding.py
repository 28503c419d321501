"""The encoding contract: ids for (question, answer) with the truncation policy of DESIGN.md."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from service.encoding import EncodedPair, PairEncoder, TruncationPolicy, pad_batch, split_budget
from tests.bundle_factory import minilm_tokenizer_json

CLS, SEP, PAD = 101, 102, 0  # MiniLM / bert-base-uncased special tokens
QUESTION = "\n\nHuman: " + " ".join(f"turn{i} alpha beta gamma" for i in range(40)) + "\n\nAssistant:"
ANSWER = " " + " ".join(f"reply{i} delta" for i in range(40))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    raw = Tokenizer.from_file(str(minilm_tokenizer_json()))
    raw.no_padding()  # MiniLM's tokenizer.json pads and truncates; the reference ids must not
    raw.no_truncation()
    return raw


def encoder(tokenizer: Tokenizer, max_length: int = 64, min_question: int = 8) -> PairEncoder:
    return _encoder(max_length, min_question)


@functools.cache
def _encoder(max_length: int, min_question: int) -> PairEncoder:
    # parsing tokenizer.json costs ~50 ms: one encoder per policy keeps the property test fast
    return PairEncoder.from_file(minilm_tokenizer_json(), TruncationPolicy(max_length, min_question))


def raw_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_short_pair_is_cls_question_sep_answer_sep_and_not_truncated(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer)
    pair = enc.encode_one("What is 2+2?", "Four.")
    q, a = raw_ids(tokenizer, "What is 2+2?"), raw_ids(tokenizer, "Four.")
    assert pair.input_ids == [CLS, *q, SEP, *a, SEP]
    assert pair.token_type_ids == [0] * (len(q) + 2) + [1] * (len(a) + 1)
    assert not pair.truncated


def test_long_question_is_cut_from_the_left_first(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer, max_length=64, min_question=8)
    answer = "Short answer."
    pair = enc.encode_one(QUESTION, answer)
    q, a = raw_ids(tokenizer, QUESTION), raw_ids(tokenizer, answer)
    kept_q = 64 - 3 - len(a)
    assert pair.truncated and len(pair) == 64
    # the latest turns survive: the kept question is the *end* of the question, the answer is whole
    assert pair.input_ids == [CLS, *q[-kept_q:], SEP, *a, SEP]


def test_answer_is_cut_from_the_right_only_after_the_question_reached_its_minimum(
    tokenizer: Tokenizer,
) -> None:
    enc = encoder(tokenizer, max_length=64, min_question=8)
    pair = enc.encode_one(QUESTION, ANSWER)
    q, a = raw_ids(tokenizer, QUESTION), raw_ids(tokenizer, ANSWER)
    assert pair.truncated and len(pair) == 64
    assert pair.input_ids == [CLS, *q[-8:], SEP, *a[: 64 - 3 - 8], SEP]
    assert pair.token_type_ids.count(0) == 8 + 2


def test_question_shorter_than_the_minimum_is_kept_whole(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer, max_length=32, min_question=8)
    pair = enc.encode_one("Hi?", ANSWER)
    q, a = raw_ids(tokenizer, "Hi?"), raw_ids(tokenizer, ANSWER)
    assert pair.input_ids == [CLS, *q, SEP, *a[: 32 - 3 - len(q)], SEP]
    assert pair.truncated


def test_empty_answer_and_empty_question_are_encoded_not_dropped(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer)
    assert enc.encode_one("Question?", "").input_ids == [CLS, *raw_ids(tokenizer, "Question?"), SEP, SEP]
    assert enc.encode_one("", "").input_ids == [CLS, SEP, SEP]
    assert not enc.encode_one("", "").truncated


def test_answer_tokens_count_the_answer_as_the_model_sees_it(tokenizer: Tokenizer) -> None:
    """The length-correction unit: answer content tokens after truncation, no special tokens."""
    enc = encoder(tokenizer, max_length=64, min_question=8)
    assert enc.encode_one("Question?", "").answer_tokens == 0
    assert enc.encode_one("", "Paris.").answer_tokens == 2  # "paris", "."
    whole = enc.encode_one("Why?", "Short answer.")
    assert whole.answer_tokens == len(raw_ids(tokenizer, "Short answer.")) == sum(whole.token_type_ids) - 1
    cut = enc.encode_one(QUESTION, ANSWER)  # the answer is cut from the right to 64 - 3 - 8 tokens
    assert cut.truncated and cut.answer_tokens == 64 - 3 - 8


def test_unicode_text_encodes_within_max_length(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer, max_length=32)
    texts = [
        "Ça va? 你好，世界 🙂🙃 naïve café",
        "e\u0301\u0301 \u200b\u202e עברית العربية",
        "你好世界🤖 " * 30,
    ]
    pairs = enc.encode(texts, list(reversed(texts)))
    assert len(pairs) == 3
    assert all(len(p) <= 32 and p.input_ids[0] == CLS and p.input_ids[-1] == SEP for p in pairs)
    assert pairs[2].truncated or pairs[0].truncated


def test_batch_encoding_keeps_every_pair_in_order_and_equals_one_by_one(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer, max_length=48)
    questions = [QUESTION, "", "Why?", QUESTION[:50]]
    answers = [ANSWER, "x", "", "Because."]
    batch = enc.encode(questions, answers)
    assert batch == [enc.encode_one(q, a) for q, a in zip(questions, answers, strict=True)]
    assert [p.truncated for p in batch] == [True, False, False, False]


def test_mismatched_lengths_and_empty_input(tokenizer: Tokenizer) -> None:
    enc = encoder(tokenizer)
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        enc.encode(["a", "b"], ["c"])
    assert enc.encode([], []) == []


def test_split_budget_arithmetic() -> None:
    assert split_budget(10, 10, 30, 5) == (10, 10)  # fits: nothing cut
    assert split_budget(40, 10, 30, 5) == (20, 10)  # question cut from 40 to 20
    assert split_budget(40, 40, 30, 5) == (5, 25)  # question at its minimum, then the answer
    assert split_budget(3, 40, 30, 5) == (3, 27)  # a question below the minimum is never cut


def test_policy_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_length"):
        TruncationPolicy(4, 0)
    with pytest.raises(ValueError, match="min_question_tokens"):
        TruncationPolicy(64, 32)


def test_pad_batch_shapes_mask_and_pad_id() -> None:
    pairs = [
        EncodedPair([CLS, 5, SEP], [0, 0, 0], False, 0),
        EncodedPair([CLS, 5, 6, 7, SEP], [0, 0, 1, 1, 1], True, 2),
    ]
    batch = pad_batch(pairs, PAD)
    assert {k: v.shape for k, v in batch.items()} == {
        k: (2, 5) for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert all(v.dtype == np.int64 for v in batch.values())
    assert batch["input_ids"][0].tolist() == [CLS, 5, SEP, PAD, PAD]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="empty batch"):
        pad_batch([], PAD)


def test_pad_token_id_of_minilm(tokenizer: Tokenizer) -> None:
    assert encoder(tokenizer).pad_token_id == PAD


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    question=st.text(max_size=400),
    answer=st.text(max_size=400),
    max_length=st.integers(min_value=8, max_value=80),
    min_question=st.integers(min_value=0, max_value=40),
)
def test_property_never_longer_than_max_length_and_untruncated_means_unchanged(
    tokenizer: Tokenizer, question: str, answer: str, max_length: int, min_question: int
) -> None:
    min_question = min(min_question, max_length // 2 - 1)
    enc = encoder(tokenizer, max_length, min_question)
    pair = enc.encode_one(question, answer)
    assert len(pair) <= max_length
    assert len(pair.token_type_ids) == len(pair.input_ids)
    full = [CLS, *raw_ids(tokenizer, question), SEP, *raw_ids(tokenizer, answer), SEP]
    assert pair.truncated == (len(full) > max_length)
    if not pair.truncated:
        assert pair.input_ids == full
