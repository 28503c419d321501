"""The `chat` encoder: conversations rendered with the model's chat template, under the token budget.

    encoder = ChatEncoder.from_file(bundle / "tokenizer.json", template, TruncationPolicy(512))
    encoder.encode_conversations([[{"role": "user", "content": "Hi?"},
                                   {"role": "assistant", "content": "Hello."}]])   # [EncodedPair]
    encoder.encode(["Hi?"], ["Hello."])   # a pair: [user: question, assistant: answer], same ids

Ids are those of ``tokenizer.apply_chat_template(messages)`` in transformers: the template renders the
text (`service.chat_template`), the tokenizer encodes it without adding special tokens (the template
writes its own). Training, export, evaluation and the service all encode through this class.

Truncation (policy ``turns-left-then-answer-right``), never dropping an item:

1. the whole conversation fits in ``max_length`` → as is;
2. else whole messages are dropped from the left, earliest first, keeping a leading system message,
   and the first shorter conversation that renders and fits is used;
3. else (the final answer is too long on its own) the shortest conversation that renders (system +
   answer, or more when the template refuses that) is cut at the token level: the answer from the
   right, keeping the template's tokens around it (the end-of-turn tokens a decoder reads last). When
   those tokens leave the answer less than ``1/ANSWER_FLOOR_DIVISOR`` of the budget, the text before
   the answer is cut from the left too (:func:`split_chat_budget`).

``answer_tokens`` (the length-correction unit) counts the tokens of the final answer's text after
truncation: the span where the template put it, found by rendering the conversation a second time
with a marker in place of the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from tokenizers import Encoding, Tokenizer

from service.chat_template import ChatTemplate
from service.conversation import (
    Conversation,
    Message,
    TemplateRenderError,
    pair_to_conversation,
)
from service.encoding import (
    CHAT_TRUNCATION_POLICY_NAME,
    EncodedPair,
    InputFormat,
    TruncationPolicy,
    default_pad_token_id,
    tokenize,
    validate_conversations,
)

# When the template's own tokens around the answer (and a system message) fill the budget, the
# answer still keeps this fraction of it: a reward read from a bare frame would mean nothing.
ANSWER_FLOOR_DIVISOR: Final = 4
_MARKER: Final = "\ue000answer\ue001"  # private-use code points: stands in for the answer's text


def split_chat_budget(prefix: int, answer: int, suffix: int, budget: int) -> tuple[int, int, int]:
    """(prefix, answer, suffix) tokens kept for a rendered conversation cut to ``budget`` tokens.

    The answer is cut from the right first; the prefix (the text before the answer) is cut from the
    left only to leave the answer ``min(answer, budget // ANSWER_FLOOR_DIVISOR)`` tokens; the suffix
    (end-of-turn tokens) is cut last. Pure arithmetic, tested without a tokenizer.
    """
    if prefix + answer + suffix <= budget:
        return prefix, answer, suffix
    answer_keep = min(answer, max(budget - prefix - suffix, budget // ANSWER_FLOOR_DIVISOR))
    suffix_keep = min(suffix, budget - answer_keep)
    return budget - answer_keep - suffix_keep, answer_keep, suffix_keep


class ChatEncoder:
    """Encode conversations (and pairs, as two-message conversations) for a chat-template model."""

    input_format: InputFormat = "chat"
    truncation_policy_name = CHAT_TRUNCATION_POLICY_NAME

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        policy: TruncationPolicy,
        pad_token_id: int | None = None,
    ) -> None:
        """``pad_token_id``: the bundle's (manifest) pad id; None picks the template's pad token, else the
        tokenizer's (a new run). Which id pads does not change a score: padding is masked and a decoder's
        score is read at the last real token, never looked up by pad id."""
        tokenizer.no_truncation()  # the policy replaces the tokenizer's own truncation
        tokenizer.no_padding()  # padding happens per sub-batch in `pad_batch`
        self.tokenizer = tokenizer
        self.template = template
        self.policy = policy
        self.pad_token_id = (
            pad_token_id if pad_token_id is not None else self._default_pad(tokenizer, template)
        )

    @classmethod
    def from_file(
        cls,
        tokenizer_json: str | Path,
        template: ChatTemplate,
        policy: TruncationPolicy,
        pad_token_id: int | None = None,
    ) -> ChatEncoder:
        return cls(Tokenizer.from_file(str(tokenizer_json)), template, policy, pad_token_id)

    @staticmethod
    def _default_pad(tokenizer: Tokenizer, template: ChatTemplate) -> int:
        pad = template.special_tokens.get("pad_token")
        pad_id = tokenizer.token_to_id(pad) if pad is not None else None
        return pad_id if pad_id is not None else default_pad_token_id(tokenizer)

    # ---- the interface every consumer uses (service.encoding.Encoder) --------------------------------
    def encode(self, questions: Sequence[str], answers: Sequence[str]) -> list[EncodedPair]:
        """Pairs as conversations: an hh question becomes its turns, any other one user message."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        return self.encode_checked(
            [pair_to_conversation(q, a) for q, a in zip(questions, answers, strict=True)]
        )

    def encode_one(self, question: str, answer: str) -> EncodedPair:
        return self.encode([question], [answer])[0]

    def encode_conversations(self, conversations: Sequence[object]) -> list[EncodedPair]:
        return self.encode_checked(validate_conversations(conversations))

    # ---- rendering and truncation --------------------------------------------------------------------
    def render(self, conversation: Conversation) -> str:
        return self.template.render(conversation)

    def encode_checked(self, conversations: Sequence[Conversation]) -> list[EncodedPair]:
        """Validated conversations → encodings, in one batched tokenizer call for those that fit."""
        texts = []
        for i, conversation in enumerate(conversations):
            try:
                texts.append(self.render(conversation))
            except TemplateRenderError as exc:
                raise TemplateRenderError(f"conversation {i}: {exc}") from exc
        encodings = tokenize(self.tokenizer, texts)
        return [
            self._whole(c, t, e) if len(e.ids) <= self.policy.max_length else self._truncate(c)
            for c, t, e in zip(conversations, texts, encodings, strict=True)
        ]

    def _whole(
        self, conversation: Conversation, text: str, encoding: Encoding, truncated: bool = False
    ) -> EncodedPair:
        ids = list(encoding.ids)
        start, end = self._answer_tokens(conversation, text, encoding)
        return EncodedPair(ids, [0] * len(ids), truncated, end - start)

    def _truncate(self, conversation: Conversation) -> EncodedPair:
        system = conversation[:1] if conversation[0].role == "system" else ()
        body = conversation[len(system) :]
        candidates: list[tuple[Conversation, str]] = []
        for drop in range(1, len(body)):  # step 2: whole messages from the left
            shorter = (*system, *body[drop:])
            try:
                candidates.append((shorter, self.render(shorter)))
            except TemplateRenderError:
                continue  # e.g. a template that insists on user/assistant alternation
        encodings = tokenize(self.tokenizer, [t for _, t in candidates])
        for (shorter, text), encoding in zip(candidates, encodings, strict=True):
            if len(encoding.ids) <= self.policy.max_length:
                return self._whole(shorter, text, encoding, truncated=True)
        # step 3: the shortest conversation that renders, its answer cut at the token level
        frame, text = candidates[-1] if candidates else (conversation, self.render(conversation))
        encoding = encodings[-1] if candidates else self.tokenizer.encode(text, add_special_tokens=False)
        ids = list(encoding.ids)
        start, end = self._answer_tokens(frame, text, encoding)
        keep_p, keep_a, keep_s = split_chat_budget(start, end - start, len(ids) - end, self.policy.max_length)
        kept = ids[start - keep_p : start] + ids[start : start + keep_a] + ids[end : end + keep_s]
        return EncodedPair(kept, [0] * len(kept), True, keep_a)

    def _answer_tokens(self, conversation: Conversation, text: str, encoding: Encoding) -> tuple[int, int]:
        """[start, end) token indices of the final answer's text in ``encoding``.

        The answer's characters are where the marker sits when the same conversation is rendered with
        the marker as its answer; a template that changes its output depending on the answer's text
        (so the two renderings differ elsewhere) falls back to the answer's last occurrence in the
        text; an answer the template does not show at all spans no token (at the end).
        """
        span = self._answer_chars(conversation, text)
        offsets = encoding.offsets
        if span is None:
            return len(offsets), len(offsets)
        first, stop = span
        start = next((i for i, (_, end) in enumerate(offsets) if end > first), len(offsets))
        end = next((i for i in range(start, len(offsets)) if offsets[i][0] >= stop), len(offsets))
        return start, end

    def _answer_chars(self, conversation: Conversation, text: str) -> tuple[int, int] | None:
        answer = conversation[-1].content
        try:
            marked = self.render((*conversation[:-1], Message("assistant", _MARKER)))
        except TemplateRenderError:
            marked = ""
        at = marked.find(_MARKER)
        if at >= 0:
            head, tail = marked[:at], marked[at + len(_MARKER) :]
            if len(head) + len(tail) <= len(text) and text.startswith(head) and text.endswith(tail):
                return len(head), len(text) - len(tail)
        found = text.rfind(answer) if answer else -1
        return (found, found + len(answer)) if found >= 0 else None
