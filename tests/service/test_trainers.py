"""The trainers' protocols (service/trainers.py) on a real server, with the exact requests each trainer
builds (sources named in docs/): every reward equals what `POST /score` gives the same pair (<= 1e-4).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.bundle import load_bundle
from service.model import load_model
from service.rendered import split_rendered
from tests.service.conftest import LiveServer

PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
RESPONSE = " Mix flour, water, salt and yeast, knead it, let it rise, then bake it hot."
OTHERS = [
    ("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris."),
    ("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any advice?\n\nAssistant:", ""),
    ("", " An answer to nothing."),
]


def score_of(url: str, pairs: list[tuple[str, str]]) -> dict:
    """What /score says of the pairs: the reference every protocol must match."""
    response = httpx.post(f"{url}/score", json={"pairs": [{"question": q, "answer": a} for q, a in pairs]})
    assert response.status_code == 200, response.text
    return response.json()


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- OpenRLHF ------------------------------------------------------------------------------------------
def test_openrlhf_one_sample_request_gets_rewards_calibrated_scores_and_numeric_extra_logs(
    shared_live: LiveServer, bundle_v1: Path
) -> None:
    """`SingleTurnAgentExecutor._fetch_rewards_via_http` (openrlhf/utils/agent.py) posts one sample."""
    payload = {"query": [PROMPT + RESPONSE], "prompts": [PROMPT], "labels": [None]}
    response = httpx.post(f"{shared_live.url}/get_reward", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    direct = score_of(shared_live.url, [(PROMPT, RESPONSE)])
    assert body["rewards"] == pytest.approx(direct["scores"], abs=1e-4)
    assert body["scores"] == pytest.approx([sigmoid(direct["normalized"][0])], abs=1e-6)
    assert 0.0 < body["scores"][0] < 1.0
    version_id = int(load_bundle(bundle_v1).sha256[:6], 16)
    assert body["extra_logs"] == {"rm_model_version": [float(version_id)], "rm_truncated": [0.0]}
    assert all(isinstance(v, float) for values in body["extra_logs"].values() for v in values)  # tensors
    assert response.headers["x-model-version"] == "1"


def test_openrlhf_empty_lists_get_empty_lists(shared_live: LiveServer) -> None:
    """With several --reward.remote_url servers, OpenRLHF sends the servers after the first empty lists."""
    response = httpx.post(f"{shared_live.url}/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rewards"] == [] and body["scores"] == [] and body["truncated"] == []
    assert body["extra_logs"] == {"rm_model_version": [], "rm_truncated": []}


def test_openrlhf_many_single_sample_requests_at_once_each_get_their_own_reward(
    shared_live: LiveServer,
) -> None:
    pairs = [(PROMPT, RESPONSE), *OTHERS] * 6
    expected = score_of(shared_live.url, pairs)["scores"]
    got: dict[int, float] = {}

    def sample(i: int) -> None:
        q, a = pairs[i]
        body = {"query": [q + a], "prompts": [q], "labels": [""]}
        got[i] = httpx.post(f"{shared_live.url}/get_reward", json=body, timeout=30).json()["rewards"][0]

    threads = [threading.Thread(target=sample, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose([got[i] for i in range(len(pairs))], expected, atol=1e-4)


def test_get_reward_without_prompts_splits_at_the_last_assistant_marker(shared_live: LiveServer) -> None:
    texts = [PROMPT + RESPONSE, *(q + a for q, a in OTHERS)]
    body = httpx.post(f"{shared_live.url}/get_reward", json={"query": texts}).json()
    pairs = [split_rendered(t) for t in texts]
    assert pairs[0] == (PROMPT, RESPONSE) and pairs[3] == ("", " An answer to nothing.")
    np.testing.assert_allclose(body["rewards"], score_of(shared_live.url, pairs)["scores"], atol=1e-4)


# ---- veRL (vLLM /classify, SGLang /v1/embeddings) ------------------------------------------------------
def test_verl_classify_request_reads_its_reward_at_probs_minus_one(
    shared_live: LiveServer, bundle_v1: Path
) -> None:
    """`RewardLoopWorker.compute_score_disrm` (verl/experimental/reward_loop/reward_loop.py), vLLM branch."""
    payload = {"model": "/models/reward", "input": PROMPT + RESPONSE, "activation": False}
    response = httpx.post(f"{shared_live.url}/classify", json=payload)
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["data"][-1]["probs"][-1] == pytest.approx(
        score_of(shared_live.url, [(PROMPT, RESPONSE)])["scores"][0], abs=1e-4
    )
    # the shape of vLLM's ClassificationResponse
    assert set(output) == {"id", "object", "created", "model", "data", "usage"}
    assert output["id"].startswith("classify-") and output["object"] == "list"
    assert isinstance(output["created"], int) and output["model"] == "tiny-rm"
    assert output["data"] == [
        {"index": 0, "label": "LABEL_0", "probs": output["data"][0]["probs"], "num_classes": 1}
    ]
    tokens = len(load_model(bundle_v1, "auto", 1).encoder.encode_one(PROMPT, RESPONSE))
    assert output["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                               "prompt_tokens_details": None}  # fmt: skip


def test_classify_lists_and_activation(shared_live: LiveServer) -> None:
    texts = [PROMPT + RESPONSE, *(q + a for q, a in OTHERS)]
    direct = score_of(shared_live.url, [split_rendered(t) for t in texts])
    raw = httpx.post(f"{shared_live.url}/classify", json={"input": texts, "use_activation": False}).json()
    assert [d["index"] for d in raw["data"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([d["probs"][-1] for d in raw["data"]], direct["scores"], atol=1e-4)
    calibrated = [sigmoid(n) for n in direct["normalized"]]
    for payload in (
        {"input": texts},
        {"input": texts, "use_activation": True},
        {"input": texts, "softmax": True},
    ):
        body = httpx.post(f"{shared_live.url}/classify", json=payload).json()  # default: activation on (vLLM)
        np.testing.assert_allclose([d["probs"][-1] for d in body["data"]], calibrated, atol=1e-5)
    assert httpx.post(f"{shared_live.url}/classify", json={"input": []}).json()["data"] == []
    clash = httpx.post(
        f"{shared_live.url}/classify", json={"input": "x", "use_activation": True, "activation": False}
    )
    assert clash.status_code == 422 and "disagree" in clash.json()["error"]["message"]


def test_sglang_embeddings_request_reads_its_reward_at_embedding_minus_one(shared_live: LiveServer) -> None:
    """The same worker's SGLang branch: POST /v1/embeddings {"model", "input"}, data[-1].embedding[-1]."""
    response = httpx.post(
        f"{shared_live.url}/v1/embeddings", json={"model": "rm", "input": PROMPT + RESPONSE}
    )
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["data"][-1]["embedding"][-1] == pytest.approx(
        score_of(shared_live.url, [(PROMPT, RESPONSE)])["scores"][0], abs=1e-4
    )
    assert output["object"] == "list" and output["data"][0]["object"] == "embedding"
    assert output["data"][0]["index"] == 0 and output["model"] == "tiny-rm"


# ---- slime --------------------------------------------------------------------------------------------
def test_slime_remote_rm_request_gets_one_json_number(shared_live: LiveServer) -> None:
    """`remote_rm` (slime/rollout/rm_hub/__init__.py) posts {"prompt", "response", "label"} and uses
    `await resp.json()` as the reward itself."""
    payload = {"prompt": PROMPT, "response": RESPONSE, "label": "a reference answer"}
    response = httpx.post(f"{shared_live.url}/slime/reward", json=payload)
    assert response.status_code == 200, response.text
    reward = response.json()
    assert isinstance(reward, float)
    assert reward == pytest.approx(score_of(shared_live.url, [(PROMPT, RESPONSE)])["scores"][0], abs=1e-4)
    assert response.headers["x-model-version"] == "1"
    empty = httpx.post(f"{shared_live.url}/slime/reward", json={"prompt": "", "response": "", "label": None})
    assert empty.status_code == 200 and math.isfinite(empty.json())
