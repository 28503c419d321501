"""service.tokenizer_thread: requests tokenised in rounds by one worker thread, each getting exactly what
its items give alone; an item the encoder refuses fails its own request only."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tokenizers import Tokenizer

from service.conversation import Message, validate_conversation
from service.encoding import SEQUENTIAL_TEXTS, EncodedPair, PairEncoder, TruncationPolicy, tokenize
from service.errors import Draining
from service.items import Item, ItemRefused, PairItem, encode_items
from service.tokenizer_thread import TokenizerThread
from tests.bundle_factory import minilm_tokenizer_json
from tests.service.chat_helpers import STRICT, chat_encoder, tiny_bpe

CONVERSATION = validate_conversation(
    [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
)
REFUSED = (Message("assistant", "a"), Message("assistant", "b"))  # STRICT wants user/assistant turns
HH_REFUSED = PairItem("\n\nHuman: Hi\n\nAssistant: Hello\n\nAssistant:", " Again.")  # two assistant turns


@pytest.fixture(scope="module")
def pair_encoder() -> PairEncoder:
    return PairEncoder.from_file(minilm_tokenizer_json(), TruncationPolicy(128, 16))


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return tiny_bpe()


def requests(n: int) -> list[list[Item]]:
    return [[PairItem(f"Question {i}?", "An answer. " * (i % 5)) for _ in range(1 + i % 3)] for i in range(n)]


async def encode_concurrently(
    tokenizer: TokenizerThread, encoder: object, batches: list[list[Item]]
) -> list[list[EncodedPair] | BaseException]:
    tasks = [tokenizer.encode(encoder, items) for items in batches]  # type: ignore[arg-type]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_requests_get_what_their_items_give_alone(pair_encoder: PairEncoder) -> None:
    batches = requests(40)
    tokenizer = TokenizerThread()
    results = asyncio.run(encode_concurrently(tokenizer, pair_encoder, batches))
    tokenizer.close()
    assert results == [encode_items(pair_encoder, items) for items in batches]


def test_requests_waiting_together_are_tokenised_in_one_round(pair_encoder: PairEncoder) -> None:
    """While the thread is busy, requests queue up; the next round takes them all in one call."""
    tokenizer = TokenizerThread()
    calls: list[int] = []
    entered, release = threading.Event(), threading.Event()

    class Counting:  # the encoder interface, counting the pairs of each call
        def encode(self, questions: list[str], answers: list[str]) -> list[EncodedPair]:
            entered.set()
            release.wait(30)  # the first round holds the thread until every request is queued
            calls.append(len(questions))
            return pair_encoder.encode(questions, answers)

    async def main() -> list[list[EncodedPair]]:
        encoder = Counting()
        first = asyncio.ensure_future(tokenizer.encode(encoder, [PairItem("q", "a")]))  # type: ignore[arg-type]
        while not entered.is_set():  # the thread took the first request and is busy with it
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(tokenizer.encode(encoder, items)) for items in requests(10)]  # type: ignore[arg-type]
        release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    tokenizer.close()
    assert calls == [1, sum(len(items) for items in requests(10))]
    assert results[1:] == [encode_items(pair_encoder, items) for items in requests(10)]


def test_a_refused_item_fails_only_its_own_request(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, STRICT)
    batches: list[list[Item]] = [
        [PairItem("q", "a")],
        [CONVERSATION, REFUSED],  # a conversation the template refuses: item 1 of its request
        [PairItem("q2", "a2"), HH_REFUSED],  # pairs only, refused in the round's joint call: item 1
        [CONVERSATION],
        [PairItem("q3", "a3")],
    ]
    tokenizer = TokenizerThread()
    results = asyncio.run(encode_concurrently(tokenizer, encoder, batches))
    tokenizer.close()
    for i in (0, 3, 4):
        assert results[i] == encode_items(encoder, batches[i])
    for i in (1, 2):
        error = results[i]
        assert isinstance(error, ItemRefused) and error.index == 1, error
        assert "must alternate" in error.reason


def test_a_failing_encoder_fails_its_requests_and_the_thread_keeps_serving(pair_encoder: PairEncoder) -> None:
    class Broken:
        def encode(self, questions: list[str], answers: list[str]) -> list[EncodedPair]:
            raise RuntimeError("tokenizer crashed")

    tokenizer = TokenizerThread()
    broken = asyncio.run(encode_concurrently(tokenizer, Broken(), requests(3)))
    assert all(isinstance(r, RuntimeError) and "tokenizer crashed" in str(r) for r in broken)
    healthy = asyncio.run(encode_concurrently(tokenizer, pair_encoder, requests(3)))
    tokenizer.close()
    assert healthy == [encode_items(pair_encoder, items) for items in requests(3)]


def test_a_cancelled_request_leaves_the_others_their_results(pair_encoder: PairEncoder) -> None:
    tokenizer = TokenizerThread()

    async def main() -> tuple[list[EncodedPair], bool]:
        gone = asyncio.ensure_future(tokenizer.encode(pair_encoder, [PairItem("q", "a")]))
        kept = asyncio.ensure_future(tokenizer.encode(pair_encoder, [PairItem("q2", "a2")]))
        await asyncio.sleep(0)
        gone.cancel()
        result = await kept
        await asyncio.gather(gone, return_exceptions=True)
        return result, gone.cancelled()

    result, cancelled = asyncio.run(main())
    tokenizer.close()
    assert cancelled
    assert result == encode_items(pair_encoder, [PairItem("q2", "a2")])


def test_a_closed_tokenizer_refuses_new_requests_as_draining(pair_encoder: PairEncoder) -> None:
    tokenizer = TokenizerThread()
    assert asyncio.run(tokenizer.encode(pair_encoder, [PairItem("q", "a")]))
    tokenizer.close()
    with pytest.raises(Draining):
        asyncio.run(tokenizer.encode(pair_encoder, [PairItem("q", "a")]))


def test_tokenize_gives_the_batched_encodings_whether_one_call_or_one_per_text(bpe: Tokenizer) -> None:
    tokenizer = Tokenizer.from_file(str(minilm_tokenizer_json()))
    texts = [
        "How do I bake bread?",
        "",
        " Mix flour, water. ",
        "é ü 日本語 🙂",
        "\n\nHuman: Hi?\n\nAssistant:",
    ]
    for tok in (tokenizer, bpe):
        for n in (1, SEQUENTIAL_TEXTS, SEQUENTIAL_TEXTS + 1):
            batch = tok.encode_batch(texts[:n], add_special_tokens=False)
            got = tokenize(tok, texts[:n])
            assert [e.ids for e in got] == [e.ids for e in batch]
            assert [e.offsets for e in got] == [e.offsets for e in batch]
            assert [e.type_ids for e in got] == [e.type_ids for e in batch]
