"""Length-grouped batches of preference pairs with dynamic padding.

    chosen, rejected = encode_pairs(encoder, pairs)          # once, batched Rust tokenisation
    batches = length_grouped_batches(pair_lengths(chosen, rejected), 16, seed=0, epoch=0)
    batch = collate(chosen, rejected, batches[0], encoder.pad_token_id)  # [2B, seq] arrays

Why: hh-rlhf pairs range from 20 to 1,000+ tokens. Random batches pad every sequence to the
longest of its batch-mates, so most of a CPU's time goes into padding; sorting pairs by length
before cutting batches (and shuffling the batches, not the pairs) wastes far less (`rlhf bench
train` counts both; README, "Reward model training"). A pair's chosen and rejected sequences go
into the same forward pass (rows [0, B) and [B, 2B)), which is what the pairwise loss compares.

Encoding goes only through the service's encoders (:func:`encode_pairs`, also used by the export
gate, `rlhf eval`, `rlhf correct-length` and the benchmarks): `service.encoding.PairEncoder` or, for
the chat format, `service.chat.ChatEncoder`, built by `training.reward.encoders`; so training sees
exactly the ids the service will compute for the same input. A text pair goes through the encoder's
``encode`` (question, answer), as a `/score` pair does; a conversational pair (its ``prompt`` set)
through ``encode_conversations``, as a `/score` conversation does: rendered with the chat template by
a ``chat`` encoder, read as hh turns by a ``pair`` encoder. torch-free (numpy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.conversation import Conversation, ConversationError
from service.encoding import EncodedPair, Encoder, pad_batch
from training.reward.data import DataError, PreferencePair


def encode_pairs(
    encoder: Encoder, pairs: Sequence[PreferencePair]
) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """(chosen, rejected) encodings, index-aligned with ``pairs`` (the service's encoder, batched)."""
    chosen = encode_answers(encoder, pairs, [p.chosen for p in pairs])
    rejected = encode_answers(encoder, pairs, [p.rejected for p in pairs])
    return chosen, rejected


def encode_answers(
    encoder: Encoder, pairs: Sequence[PreferencePair], answers: Sequence[str]
) -> list[EncodedPair]:
    """``answers[i]`` as the answer of ``pairs[i]``, index-aligned; text pairs in one batched
    ``encode`` call, conversational pairs in one ``encode_conversations`` call (module docstring).

    A conversation the encoder refuses (a chat template that raises on it, e.g. one that demands
    strictly alternating roles) is a :class:`DataError` naming the pair."""
    if len(pairs) != len(answers):
        raise ValueError(f"{len(pairs)} pairs but {len(answers)} answers")
    texts = [i for i, p in enumerate(pairs) if p.prompt is None]
    chats = [i for i, p in enumerate(pairs) if p.prompt is not None]
    encoded: dict[int, EncodedPair] = {}
    if texts:
        questions = [pairs[i].question for i in texts]
        encoded.update(zip(texts, encoder.encode(questions, [answers[i] for i in texts]), strict=True))
    if chats:
        conversations = [pairs[i].conversation(answers[i]) for i in chats]
        encoded.update(zip(chats, _encode_conversations(encoder, conversations, chats), strict=True))
    return [encoded[i] for i in range(len(pairs))]


def _encode_conversations(
    encoder: Encoder, conversations: Sequence[Conversation], indices: Sequence[int]
) -> list[EncodedPair]:
    try:
        return encoder.encode_conversations(conversations)
    except ConversationError:
        for index, conversation in zip(indices, conversations, strict=True):  # which one: re-encode alone
            try:
                encoder.encode_conversations([conversation])
            except ConversationError as exc:
                opening = conversation[0].content[:60]
                raise DataError(
                    f"pair {index} (conversation opening {opening!r}): the {encoder.input_format} "
                    f"encoder cannot encode it: {exc}"
                ) from exc
        raise


def pair_lengths(chosen: Sequence[EncodedPair], rejected: Sequence[EncodedPair]) -> list[int]:
    """The padded width a pair needs on its own: the longer of its two sequences."""
    return [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_batches: int = 0
) -> list[list[int]]:
    """Batches of pair indices, deterministic in (seed, epoch).

    Shuffle all pairs, cut them into groups of ``group_batches * batch_size`` (0 = one group), sort
    each group by length, cut batches, then shuffle the batch order. The last batch may be smaller.
    """
    assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group = group_batches * batch_size if group_batches > 0 else max(len(lengths), 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        # stable sort keeps the shuffled order among equal lengths, so ties differ per epoch
        members = sorted(order[start : start + group].tolist(), key=lambda i: lengths[i], reverse=True)
        batches.extend(members[k : k + batch_size] for k in range(0, len(members), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(
    chosen: Sequence[EncodedPair], rejected: Sequence[EncodedPair], indices: Sequence[int], pad_token_id: int
) -> dict[str, np.ndarray]:
    """One forward's inputs: rows [0, B) are the chosen sequences, rows [B, 2B) the rejected ones."""
    rows = [chosen[i] for i in indices] + [rejected[i] for i in indices]
    return pad_batch(rows, pad_token_id)  # each value: int64 [2B, longest of the 2B sequences]
