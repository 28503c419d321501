"""`POST /score` and `/score/groups` with conversations beside pairs, on a real server, for a `pair`
bundle (reads them as hh turns, the way the default bundle was trained) and a `chat` bundle (renders
them with its chat template); `GET /v1/models` names the format and the template's hash."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.bundle import CHAT_TEMPLATE_NAME, load_bundle
from service.encoding import pad_batch
from service.model import load_model
from tests.service.chat_bundles import make_chat_bundle
from tests.service.chat_helpers import CHATML, SPECIAL_TOKENS
from tests.service.conftest import LiveServer, concurrently, settings_for

CONVERSATION = [
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water and yeast."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "Bake it hot."},
]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
# CONVERSATION as the hh pair a pair bundle reads (a system message dropped: hh has none)
HH = ("\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast.\n\nHuman: And then?\n\nAssistant:",
      " Bake it hot.")  # fmt: skip
PAIR = {"question": "What is the capital of France?", "answer": "Paris."}


@pytest.fixture(scope="module")
def chat_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chat_bundle(tmp_path_factory.mktemp("chat") / "rm", CHATML, SPECIAL_TOKENS, max_length=160)


@pytest.fixture(scope="module")
def chat_live(chat_bundle: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(chat_bundle))) as server:
        yield server


def post(url: str, path: str, body: dict[str, object]) -> dict:
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def offline(bundle: Path, conversations: list[list[dict[str, str]]]) -> np.ndarray:
    """Each conversation encoded by the bundle's encoder and scored alone through onnxruntime."""
    model = load_model(bundle, "auto", 1)
    encoded = model.encoder.encode_conversations(conversations)
    pad = model.encoder.pad_token_id
    return np.array([model.backend.run(pad_batch([e], pad))["score"][0] for e in encoded])


def test_a_pair_bundle_scores_a_conversation_as_its_hh_pair(shared_live: LiveServer) -> None:
    items = [PAIR, {"messages": CONVERSATION}, {"question": "", "answer": ""}, {"messages": WITH_SYSTEM}]
    body = post(shared_live.url, "/score", {"pairs": items})
    hh = {"question": HH[0], "answer": HH[1]}
    reference = post(shared_live.url, "/score", {"pairs": [PAIR, hh, {"question": "", "answer": ""}, hh]})
    np.testing.assert_allclose(body["scores"], reference["scores"], atol=1e-4)
    assert body["truncated"] == [False] * 4 and body["model"] == reference["model"]


def test_a_chat_bundle_renders_conversations_with_its_template(
    chat_live: LiveServer, chat_bundle: Path
) -> None:
    long = [
        {"role": "user", "content": "Tell me about the sea. " * 40},
        {"role": "assistant", "content": "Deep."},
    ]
    conversations = [CONVERSATION, WITH_SYSTEM, long]
    body = post(chat_live.url, "/score", {"pairs": [{"messages": c} for c in conversations]})
    np.testing.assert_allclose(body["scores"], offline(chat_bundle, conversations), atol=1e-4)
    assert body["truncated"] == [False, False, True]  # per item: the long one lost its earliest text
    assert all(math.isfinite(s) for s in body["scores"])
    # a pair is the two-message conversation [user: question, assistant: answer]
    as_pair = post(chat_live.url, "/score", {"pairs": [PAIR]})["scores"]
    as_messages = [
        {"role": "user", "content": PAIR["question"]},
        {"role": "assistant", "content": PAIR["answer"]},
    ]
    assert as_pair == pytest.approx(
        post(chat_live.url, "/score", {"pairs": [{"messages": as_messages}]})["scores"], abs=1e-6
    )


def test_groups_of_answers_to_one_conversation(chat_live: LiveServer, shared_live: LiveServer) -> None:
    answers = ["Bake it hot.", "", "I cannot help with that."]
    history = CONVERSATION[:-1]
    for live in (chat_live, shared_live):
        body = {
            "groups": [{"messages": history, "answers": answers}, {"question": "Hi?", "answers": ["Hello."]}]
        }
        groups = post(live.url, "/score/groups", body)["groups"]
        expected = [[*history, {"role": "assistant", "content": a}] for a in answers]
        direct = post(live.url, "/score", {"pairs": [{"messages": c} for c in expected]})["scores"]
        np.testing.assert_allclose(groups[0]["scores"], direct, atol=1e-4)
        scores = np.array(groups[0]["scores"])
        assert groups[0]["mean"] == pytest.approx(scores.mean())
        loo = (scores.sum() - scores) / 2
        np.testing.assert_allclose(groups[0]["advantages"], scores - loo, atol=1e-9)
        assert groups[1]["scores"] == pytest.approx(
            post(live.url, "/score", {"pairs": [{"question": "Hi?", "answer": "Hello."}]})["scores"], abs=1e-4
        )


def test_concurrent_requests_of_both_kinds_each_get_their_own_scores(chat_live: LiveServer) -> None:
    """Pairs and conversations share the batcher's batches; nobody gets a batch-mate's score."""
    items: list[dict[str, object]] = [
        {"messages": CONVERSATION}, PAIR, {"messages": WITH_SYSTEM}, {"question": "", "answer": "x"},
    ] * 4  # fmt: skip
    expected = post(chat_live.url, "/score", {"pairs": items})["scores"]
    got = concurrently(
        lambda i: post(chat_live.url, "/score", {"pairs": [items[i]]})["scores"][0], len(items)
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_models_reports_the_input_format_and_template_hash(
    chat_live: LiveServer, chat_bundle: Path, shared_live: LiveServer
) -> None:
    chat = httpx.get(f"{chat_live.url}/v1/models").json()["data"][0]
    assert chat["input_format"] == "chat"
    assert chat["chat_template_sha256"] == hashlib.sha256(CHATML.encode()).hexdigest()
    assert chat["chat_template_sha256"] == load_bundle(chat_bundle).manifest.files[CHAT_TEMPLATE_NAME]
    pair = httpx.get(f"{shared_live.url}/v1/models").json()["data"][0]
    assert pair["input_format"] == "pair" and pair["chat_template_sha256"] is None


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"messages": []}, "pairs[1].messages: the conversation is empty"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "pairs[1].messages: the last message"),
        ({"messages": [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "a"}]},
         "pairs[1].messages: message 0: unknown role 'tool'"),
        ({"messages": [{"role": "assistant", "content": 3}]}, "pairs.1.conversation.messages.0.content"),
        ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]},
         "Input should be a valid string"),
        ({"messages": [*CONVERSATION[:1], {"role": "system", "content": "x"}, CONVERSATION[1]]},
         "message 1: a system message may only come first"),
        ({"messages": "Hi"}, "pairs.1.conversation.messages"),
        ({"messages": [{"role": "assistant", "content": "a", "name": "bot"}]}, "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_conversation_is_a_422_naming_the_item(
    shared_live: LiveServer, item: dict[str, object], problem: str
) -> None:
    response = httpx.post(f"{shared_live.url}/score", json={"pairs": [PAIR, item]}, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_failed" and problem in error["message"], error["message"]
