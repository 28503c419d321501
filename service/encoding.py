"""Turn (question, answer) pairs into model inputs: the one encoder both training and serving use.

Why this module exists: a reward model that was trained on one tokenisation and served with another
scores garbage without any error. Training, export, evaluation and the service all call
:class:`PairEncoder`, so the ids a pair gets are the same everywhere by construction.

Truncation policy (DESIGN.md): a pair is never dropped. When question + answer exceed
``max_length``, the *question* is cut from the left (the latest turns of a dialogue matter most),
down to ``min_question_tokens``; only then is the answer cut from the right. Each encoded pair
says whether it was cut.

Two input formats share one interface (:class:`Encoder`): ``pair`` (:class:`PairEncoder`, a cross-encoder
reading question and answer through the tokenizer's pair template) and ``chat`` (`service.chat.ChatEncoder`,
a conversation rendered with the model's chat template). Both take pairs and conversations, each the
way its model was trained (`service.conversation`), and both return :class:`EncodedPair` rows, so the
batcher, the export gate, training and evaluation never ask which one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from service.conversation import Conversation, ConversationError, conversation_to_hh, validate_conversation

TRUNCATION_POLICY_NAME: Final = "question-left-then-answer-right"
CHAT_TRUNCATION_POLICY_NAME: Final = "turns-left-then-answer-right"
InputFormat = Literal["pair", "chat"]


@dataclass(frozen=True)
class TruncationPolicy:
    """How long inputs may be and how they are cut. Stored in the bundle manifest."""

    max_length: int = 512  # model positions, special tokens included
    min_question_tokens: int = 32  # the question keeps at least this many tokens before the answer is cut

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if not 0 <= self.min_question_tokens < self.max_length // 2:
            raise ValueError(
                f"min_question_tokens must be in [0, max_length/2), got {self.min_question_tokens}"
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": TRUNCATION_POLICY_NAME,
            "max_length": self.max_length,
            "min_question_tokens": self.min_question_tokens,
        }


@dataclass(frozen=True)
class EncodedPair:
    """One pair as model input ids, before padding.

    ``answer_tokens`` is the answer's length as the model sees it: its content tokens after truncation,
    without the special tokens the pair template adds. It is the unit of a bundle's length correction
    (manifest ``length_correction.unit == "answer_tokens"``), counted here once for every tokenizer,
    whether or not its template marks an answer segment in ``token_type_ids``.
    """

    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool
    answer_tokens: int

    def __len__(self) -> int:
        return len(self.input_ids)


SEQUENTIAL_TEXTS: Final = 4  # up to this many texts, `tokenize` encodes them one call each


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    """`texts` tokenised without special tokens, in input order: one batched call, or one call per
    text for a few texts. Why two ways: the batched call hands its texts to the tokenizer's thread
    pool, whose hand-off costs CPU on every call; above a handful of texts spreading the work over
    the cores is worth it, for one pair (a trainer's request) it is not. Both give the same
    encodings (ids, type ids, offsets)."""
    if len(texts) <= SEQUENTIAL_TEXTS:
        return [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    return tokenizer.encode_batch(list(texts), add_special_tokens=False)


def split_budget(question_len: int, answer_len: int, budget: int, min_question: int) -> tuple[int, int]:
    """Return (question tokens kept, answer tokens kept) for a pair under ``budget`` content tokens.

    Pure arithmetic, kept apart so the policy can be tested without a tokenizer.
    """
    if question_len + answer_len <= budget:
        return question_len, answer_len
    question_floor = min(question_len, min_question)
    question_keep = max(budget - answer_len, question_floor)
    answer_keep = budget - question_keep
    return question_keep, min(answer_len, answer_keep)


class Encoder(Protocol):
    """What every consumer of encodings needs: the batcher, the export gate, training, evaluation."""

    input_format: InputFormat
    truncation_policy_name: str  # the manifest's `truncation.policy`
    policy: TruncationPolicy
    pad_token_id: int  # the one pad id of the bundle: `pad_batch` fills padding with it

    def encode(self, questions: Sequence[str], answers: Sequence[str]) -> list[EncodedPair]: ...

    def encode_one(self, question: str, answer: str) -> EncodedPair: ...

    def encode_conversations(self, conversations: Sequence[object]) -> list[EncodedPair]:
        """Raw message lists → encodings; raises a `ConversationError` naming the bad item."""
        ...


def validate_conversations(conversations: Sequence[object]) -> list[Conversation]:
    """Check every conversation; the error of a bad one is prefixed with its index in the request."""
    checked = []
    for i, raw in enumerate(conversations):
        try:
            checked.append(validate_conversation(raw))
        except ConversationError as exc:
            raise type(exc)(f"conversation {i}: {exc}") from exc
    return checked


class PairEncoder:
    """Encode pairs with a `tokenizers` fast tokenizer and the truncation policy."""

    input_format: InputFormat = "pair"
    truncation_policy_name = TRUNCATION_POLICY_NAME

    def __init__(
        self, tokenizer: Tokenizer, policy: TruncationPolicy, pad_token_id: int | None = None
    ) -> None:
        """``pad_token_id``: the bundle's (manifest) pad id; None picks the tokenizer's (a new run)."""
        tokenizer.no_truncation()  # the policy below replaces the tokenizer's own truncation
        tokenizer.no_padding()  # padding happens per sub-batch in `pad_batch`
        self.tokenizer = tokenizer
        self.policy = policy
        self._content_budget = policy.max_length - tokenizer.num_special_tokens_to_add(is_pair=True)
        self.pad_token_id = default_pad_token_id(tokenizer) if pad_token_id is None else pad_token_id

    @classmethod
    def from_file(
        cls, tokenizer_json: str | Path, policy: TruncationPolicy, pad_token_id: int | None = None
    ) -> PairEncoder:
        return cls(Tokenizer.from_file(str(tokenizer_json)), policy, pad_token_id)

    def encode_conversations(self, conversations: Sequence[object]) -> list[EncodedPair]:
        """Conversations read as hh-rlhf pairs: the format the default `pair` bundle was trained on."""
        pairs = [conversation_to_hh(c) for c in validate_conversations(conversations)]
        return self.encode([q for q, _ in pairs], [a for _, a in pairs])

    def encode(self, questions: Sequence[str], answers: Sequence[str]) -> list[EncodedPair]:
        """Encode pairs in one tokenizer call (`tokenize`: batched and multi-threaded, unless few)."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        if not questions:
            return []
        encodings = tokenize(self.tokenizer, [*questions, *answers])
        n = len(questions)
        return [self._join(encodings[i], encodings[n + i]) for i in range(n)]

    def encode_one(self, question: str, answer: str) -> EncodedPair:
        return self.encode([question], [answer])[0]

    def _join(self, question: Encoding, answer: Encoding) -> EncodedPair:
        q_keep, a_keep = split_budget(
            len(question.ids), len(answer.ids), self._content_budget, self.policy.min_question_tokens
        )
        truncated = q_keep < len(question.ids) or a_keep < len(answer.ids)
        if q_keep < len(question.ids):
            question.truncate(q_keep, direction="left")
        if a_keep < len(answer.ids):
            answer.truncate(a_keep, direction="right")
        joined = self.tokenizer.post_process(question, answer, add_special_tokens=True)
        if not joined.ids:  # no text and a tokenizer that adds no special tokens (a decoder's BPE):
            return EncodedPair([self.pad_token_id], [0], truncated, 0)  # one token to read a score at
        return EncodedPair(list(joined.ids), list(joined.type_ids), truncated, a_keep)


def pad_batch(pairs: Sequence[EncodedPair], pad_token_id: int) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest member: int64 arrays of shape [batch, seq]."""
    if not pairs:
        raise ValueError("cannot pad an empty batch")
    width = max(len(p) for p in pairs)
    input_ids = np.full((len(pairs), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(pairs), width), dtype=np.int64)
    attention_mask = np.zeros((len(pairs), width), dtype=np.int64)
    for row, pair in enumerate(pairs):
        n = len(pair)
        input_ids[row, :n] = pair.input_ids
        token_type_ids[row, :n] = pair.token_type_ids
        attention_mask[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def default_pad_token_id(tokenizer: Tokenizer) -> int:
    """The pad id a new run uses: the tokenizer's padding config, else a known pad-like token, else 0.
    Any id is safe for the score (padding is masked and the score is read at the last real token);
    the bundle keeps the one chosen so every later encoding pads with the same id."""
    padding = tokenizer.padding
    if padding is not None and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|padding|>", "<|endoftext|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
