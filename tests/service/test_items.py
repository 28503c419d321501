"""service.items: pairs and conversations of one request, encoded in order by the bundle's encoder; an
item the encoder refuses is named by its index in the request."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from service.conversation import Message, validate_conversation
from service.encoding import PairEncoder, TruncationPolicy
from service.items import ItemRefused, PairItem, answer_text, encode_items
from tests.bundle_factory import minilm_tokenizer_json
from tests.service.chat_helpers import CHATML, STRICT, chat_encoder, tiny_bpe

CONVERSATION = validate_conversation(
    [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
)
ITEMS = [PairItem("How?", "Like this."), CONVERSATION, PairItem("", ""), CONVERSATION[1:]]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return tiny_bpe()


def test_mixed_items_are_encoded_in_order_as_each_alone(bpe: Tokenizer) -> None:
    encoders = [
        chat_encoder(bpe, CHATML),
        PairEncoder.from_file(minilm_tokenizer_json(), TruncationPolicy(128, 16)),
    ]
    for encoder in encoders:
        together = encode_items(encoder, ITEMS)
        alone = [encode_items(encoder, [item])[0] for item in ITEMS]
        assert together == alone
        assert together[0] == encoder.encode_one("How?", "Like this.")
        assert together[1] == encoder.encode_conversations([CONVERSATION])[0]
        assert encode_items(encoder, []) == []


def test_an_item_the_template_refuses_is_named_by_its_index_in_the_request(bpe: Tokenizer) -> None:
    """STRICT insists on user/assistant alternation: two assistant messages in a row fail to render."""
    refused = (Message("assistant", "a"), Message("assistant", "b"))
    items = [CONVERSATION, PairItem("q", "a"), CONVERSATION, refused, CONVERSATION]
    with pytest.raises(ItemRefused) as caught:
        encode_items(chat_encoder(bpe, STRICT), items)
    assert caught.value.index == 3
    assert "must alternate" in caught.value.reason
    assert not caught.value.reason.startswith("conversation ")  # the encoder's own batch index is gone


def test_the_answer_text_is_the_pairs_answer_or_the_last_message() -> None:
    assert [answer_text(item) for item in ITEMS] == ["Like this.", "Hello.", "", "Hello."]
