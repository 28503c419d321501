"""The chat encoder: pairs as conversations, truncation that drops whole turns from the left and cuts
the answer from the right only when it alone is too long, per-item flags, never a dropped item."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from service.chat import ANSWER_FLOOR_DIVISOR, ChatEncoder, split_chat_budget
from service.conversation import InvalidConversation, Message, TemplateRenderError, validate_conversation
from service.encoding import PairEncoder, TruncationPolicy
from tests.bundle_factory import minilm_tokenizer_json
from tests.service.chat_helpers import CHATML, LLAMA3, STRICT, chat_encoder, tiny_bpe

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def turns(n: int) -> list[dict[str, str]]:
    """n user/assistant exchanges of about 20 tokens each, the last assistant message the answer."""
    out = []
    for i in range(n):
        out.append({"role": "user", "content": f"Question {i}: how do I bake bread by the sea?"})
        out.append({"role": "assistant", "content": f"Answer {i}: mix flour, water, salt and yeast."})
    return out


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return tiny_bpe()


def ids_of(encoder: ChatEncoder, messages: list[dict[str, str]]) -> list[int]:
    text = encoder.render(validate_conversation(messages))
    return list(encoder.tokenizer.encode(text, add_special_tokens=False).ids)


def test_a_pair_is_a_user_question_and_an_assistant_answer(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, CHATML)
    pair = encoder.encode_one("How do I bake bread?", "Mix flour.")
    conversation = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour."},
    ]
    assert pair == encoder.encode_conversations([conversation])[0]


def test_an_hh_question_becomes_its_turns(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, CHATML)
    question = "\n\nHuman: Hello there\n\nAssistant: Hi.\n\nHuman: The sea?\n\nAssistant:"
    expected = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "The sea?"},
        {"role": "assistant", "content": "It is deep."},
    ]
    assert encoder.encode_one(question, " It is deep.") == encoder.encode_conversations([expected])[0]


def test_answer_tokens_count_the_answer_text_only(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, CHATML)
    answer = "It is large, deep and salty."
    encoded = encoder.encode_one("The sea?", answer)
    assert encoded.answer_tokens == len(bpe.encode(answer, add_special_tokens=False).ids)
    assert encoder.encode_one("The sea?", "").answer_tokens == 0


def test_earliest_turns_are_dropped_whole_and_the_system_message_kept(bpe: Tokenizer) -> None:
    messages = [SYSTEM, *turns(6)]
    full = len(ids_of(chat_encoder(bpe, CHATML), messages))
    budget = full - 10  # too long by a little: one exchange must go
    encoder = chat_encoder(bpe, CHATML, budget)
    encoded = encoder.encode_conversations([messages])[0]
    # the result is exactly the rendering of: system + the conversation without its first message
    # (dropping one user message already fits; the template then starts with an assistant turn)
    assert encoded.input_ids == ids_of(encoder, [SYSTEM, *messages[2:]])
    assert encoded.truncated and len(encoded) <= budget


def test_many_turns_dropped_until_it_fits_and_the_answer_is_whole(bpe: Tokenizer) -> None:
    messages = turns(8)
    answer_only = len(ids_of(chat_encoder(bpe, LLAMA3), messages[-2:]))
    encoder = chat_encoder(bpe, LLAMA3, answer_only + 3)
    encoded = encoder.encode_conversations([messages])[0]
    assert encoded.input_ids == ids_of(encoder, messages[-2:])  # the last question and its answer
    assert encoded.truncated
    assert encoded.answer_tokens == len(bpe.encode(messages[-1]["content"], add_special_tokens=False).ids)


def test_a_long_answer_alone_is_cut_from_the_right_keeping_the_end_of_turn(bpe: Tokenizer) -> None:
    long_answer = " ".join(f"word{i}" for i in range(200))
    messages = [SYSTEM, *turns(2)[:-1], {"role": "assistant", "content": long_answer}]
    encoder = chat_encoder(bpe, CHATML, 64)
    encoded = encoder.encode_conversations([messages])[0]
    frame = ids_of(encoder, [SYSTEM, messages[-1]])  # every earlier turn dropped, the system kept
    assert encoded.truncated and len(encoded) == 64
    end_of_turn = bpe.encode("<|im_end|>\n", add_special_tokens=False).ids
    assert encoded.input_ids[-len(end_of_turn) :] == end_of_turn  # what a decoder reads last survives
    kept = 64 - len(end_of_turn)
    assert encoded.input_ids[:kept] == frame[:kept]  # system + header + the answer's beginning
    prefix = len(ids_of(encoder, [SYSTEM, {"role": "assistant", "content": ""}])) - len(end_of_turn)
    assert encoded.answer_tokens == 64 - prefix - len(end_of_turn)


def test_a_template_that_refuses_shorter_conversations_drops_turns_it_accepts(bpe: Tokenizer) -> None:
    """The strict (alternating) template refuses a conversation starting with an assistant turn, so
    truncation skips those candidates: it drops a whole exchange instead of one message."""
    messages = [SYSTEM, *turns(4)]
    full = len(ids_of(chat_encoder(bpe, STRICT), messages))
    encoder = chat_encoder(bpe, STRICT, full - 5)
    encoded = encoder.encode_conversations([messages])[0]
    assert encoded.input_ids == ids_of(encoder, [SYSTEM, *messages[3:]])
    assert encoded.truncated


def test_a_batch_keeps_every_item_in_order_with_its_own_flag(bpe: Tokenizer) -> None:
    encoder = chat_encoder(bpe, CHATML, 48)
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    long = turns(6)
    huge = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "bread " * 300}]
    encoded = encoder.encode_conversations([short, long, huge, short])
    assert [e.truncated for e in encoded] == [False, True, True, False]
    assert all(0 < len(e) <= 48 for e in encoded)
    assert encoded[0] == encoded[3] == encoder.encode_conversations([short])[0]


@pytest.mark.parametrize(
    ("sizes", "budget", "kept"),
    [
        ((10, 20, 2), 64, (10, 20, 2)),  # fits
        ((10, 100, 2), 64, (10, 52, 2)),  # the answer cut from the right
        ((60, 100, 2), 64, (46, 16, 2)),  # the frame fills the budget: the answer keeps a quarter
        ((60, 5, 2), 64, (57, 5, 2)),  # a short answer keeps all of itself
        ((0, 100, 70), 64, (0, 16, 48)),  # a pathological end-of-turn is cut last
    ],
)
def test_split_chat_budget(sizes: tuple[int, int, int], budget: int, kept: tuple[int, int, int]) -> None:
    assert split_chat_budget(*sizes, budget) == kept
    assert sum(kept) == min(sum(sizes), budget)
    assert budget // ANSWER_FLOOR_DIVISOR == 16


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty"),
        ("hello", "list of messages"),
        ([{"role": "user", "content": "Hi"}], "must be the assistant answer"),
        ([{"role": "bot", "content": "Hi"}], "unknown role 'bot'"),
        ([{"role": "assistant", "content": ["a", "b"]}], "content must be a string"),
        ([{"role": "assistant", "content": None}], "content must be a string"),
        ([{"role": "assistant"}], "needs both"),
        (
            [{"role": "user", "content": "a"}, SYSTEM, {"role": "assistant", "content": "b"}],
            "only come first",
        ),
        (["just text"], "expected an object"),
    ],
)
def test_bad_conversations_raise_a_typed_error_naming_the_problem(
    bpe: Tokenizer, messages: object, match: str
) -> None:
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(InvalidConversation, match=match) as caught:
        chat_encoder(bpe, CHATML).encode_conversations([ok, messages])
    assert str(caught.value).startswith("conversation 1: ")
    assert isinstance(caught.value, ValueError)  # callers that validate input catch one level


def test_a_template_that_refuses_the_conversation_names_it(bpe: Tokenizer) -> None:
    messages = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(TemplateRenderError, match=r"conversation 0: .*must alternate"):
        chat_encoder(bpe, STRICT).encode_conversations([messages])


def test_a_pair_bundle_reads_conversations_as_hh_text() -> None:
    """The default bundle was trained on hh-rlhf text: a conversation is rendered that way for it."""
    encoder = PairEncoder.from_file(minilm_tokenizer_json(), TruncationPolicy(128, 16))
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "The sea?"},
        {"role": "assistant", "content": "It is deep."},
    ]
    question = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: The sea?\n\nAssistant:"  # system dropped
    assert encoder.encode_conversations([messages]) == [encoder.encode_one(question, " It is deep.")]
    with pytest.raises(InvalidConversation, match=r"conversation 0: .*unknown role"):
        encoder.encode_conversations(
            [[{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]]
        )


def test_messages_may_be_message_objects() -> None:
    conversation = validate_conversation([Message("user", "a"), {"role": "assistant", "content": "b"}])
    assert conversation == (Message("user", "a"), Message("assistant", "b"))
