"""The trainers' protocols (service/trainers.py) on a real server, with the exact requests each trainer
builds (sources named in docs/): every reward equals what `POST /score` gives the same pair (<= 1e-4).
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.bundle import load_bundle
from service.model import load_model
from service.rendered import split_rendered
from tests.service.conftest import (
    ENSEMBLE_MEAN,
    ENSEMBLE_STD,
    LiveServer,
    concurrently,
    make_ensemble_bundle,
    penalised_reference,
    score_of,
    settings_for,
)

PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
RESPONSE = " Mix flour, water, salt and yeast, knead it, let it rise, then bake it hot."
OTHERS = [
    ("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris."),
    ("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any advice?\n\nAssistant:", ""),
    ("", " An answer to nothing."),
]


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

    def sample(i: int) -> float:
        q, a = pairs[i]
        body = {"query": [q + a], "prompts": [q], "labels": [""]}
        return httpx.post(f"{shared_live.url}/get_reward", json=body, timeout=30).json()["rewards"][0]

    np.testing.assert_allclose(concurrently(sample, len(pairs)), expected, atol=1e-4)


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


# ---- rendered text: how each query was read ------------------------------------------------------------
CHATML_PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"


def test_get_reward_reports_how_each_query_was_read(shared_live: LiveServer) -> None:
    """On the (hh-trained) pair bundle: a ChatML query is read back into turns and scored as its hh
    pair; hh and plain text keep the plain-text rule."""
    queries = [CHATML_PROMPT + "Mix flour.<|im_end|>", PROMPT + RESPONSE, "Just text."]
    body = httpx.post(f"{shared_live.url}/get_reward", json={"query": queries}).json()
    assert body["read_as"] == ["chatml", "hh", "text"]
    pairs = [(PROMPT, " Mix flour."), (PROMPT, RESPONSE), ("", "Just text.")]
    np.testing.assert_allclose(body["rewards"], score_of(shared_live.url, pairs)["scores"], atol=1e-4)
    slime = {"prompt": CHATML_PROMPT, "response": "Mix flour.<|im_end|>"}
    reward = httpx.post(f"{shared_live.url}/slime/reward", json=slime).json()
    assert reward == pytest.approx(body["rewards"][0], abs=1e-4)


# ---- ?uncertainty_penalty=λ: the reward a trainer cannot post-process, penalised on the server ----------
LAMBDA = 0.7  # served by the ensemble_live fixture (tests/service/conftest.py): four quality heads


def post_penalised(url: str, route: str, payload: object, penalty: object = LAMBDA) -> httpx.Response:
    return httpx.post(f"{url}{route}", params={"uncertainty_penalty": penalty}, json=payload, timeout=30)


def test_get_reward_penalises_rewards_and_keeps_scores_the_models_own_verdict(
    ensemble_live: LiveServer,
) -> None:
    pairs = [(PROMPT, RESPONSE), *OTHERS]
    expected, direct = penalised_reference(ensemble_live.url, pairs, LAMBDA)
    payload = {"query": [q + a for q, a in pairs], "prompts": [q for q, _ in pairs]}
    response = post_penalised(ensemble_live.url, "/get_reward", payload)
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["rewards"], expected, atol=1e-4)
    np.testing.assert_allclose(body["scores"], [sigmoid(n) for n in direct["normalized"]], atol=1e-5)
    np.testing.assert_allclose(body["normalized"], direct["normalized"], atol=1e-4)
    np.testing.assert_allclose(body["extra_logs"]["rm_uncertainty"], direct["uncertainty"], atol=1e-4)
    plain = post_penalised(ensemble_live.url, "/get_reward", payload, 0).json()
    np.testing.assert_allclose(plain["rewards"], direct["scores"], atol=1e-4)


def test_classify_and_embeddings_penalise_the_reward_they_return(ensemble_live: LiveServer) -> None:
    texts = [PROMPT + RESPONSE, *(q + a for q, a in OTHERS)]
    expected, _ = penalised_reference(ensemble_live.url, [split_rendered(t) for t in texts], LAMBDA)
    raw = post_penalised(ensemble_live.url, "/classify", {"input": texts, "activation": False})
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose([d["probs"][-1] for d in raw.json()["data"]], expected, atol=1e-4)
    unit = post_penalised(ensemble_live.url, "/classify", {"input": texts}).json()  # activation on
    calibrated = [sigmoid((e - ENSEMBLE_MEAN) / ENSEMBLE_STD) for e in expected]
    np.testing.assert_allclose([d["probs"][-1] for d in unit["data"]], calibrated, atol=1e-5)
    sglang = post_penalised(ensemble_live.url, "/v1/embeddings", {"model": "rm", "input": texts})
    assert sglang.status_code == 200, sglang.text
    np.testing.assert_allclose([d["embedding"][-1] for d in sglang.json()["data"]], expected, atol=1e-4)


def test_slime_reward_is_the_penalised_score(ensemble_live: LiveServer) -> None:
    expected, _ = penalised_reference(ensemble_live.url, [(PROMPT, RESPONSE)], LAMBDA)
    payload = {"prompt": PROMPT, "response": RESPONSE, "label": None}
    response = post_penalised(ensemble_live.url, "/slime/reward", payload)
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(float(expected[0]), abs=1e-4)


PENALTY_BODIES = {
    "/get_reward": {"query": [PROMPT + RESPONSE], "prompts": [PROMPT]},
    "/classify": {"input": PROMPT + RESPONSE, "activation": False},
    "/v1/embeddings": {"input": PROMPT + RESPONSE},
    "/slime/reward": {"prompt": PROMPT, "response": RESPONSE},
}


@pytest.mark.parametrize("route", list(PENALTY_BODIES))
def test_a_penalty_on_a_bundle_without_an_ensemble_is_a_422_not_a_silent_no_op(
    shared_live: LiveServer, route: str
) -> None:
    response = post_penalised(shared_live.url, route, PENALTY_BODIES[route], 0.5)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_failed"
    assert "uncertainty_penalty=0.5" in error["message"] and "--quality-heads" in error["message"]
    assert post_penalised(shared_live.url, route, PENALTY_BODIES[route], 0).status_code == 200
    if route == "/get_reward":  # refused before scoring: even OpenRLHF's empty lists
        empty = post_penalised(shared_live.url, route, {"query": [], "prompts": []}, 0.5)
        assert empty.status_code == 422


@pytest.mark.parametrize("route", list(PENALTY_BODIES))
@pytest.mark.parametrize("bad", ["-0.5", "nan", "inf", "-inf", "lots"])
def test_a_bad_lambda_is_a_422_naming_the_parameter(ensemble_live: LiveServer, route: str, bad: str) -> None:
    response = post_penalised(ensemble_live.url, route, PENALTY_BODIES[route], bad)
    assert response.status_code == 422, response.text
    assert "uncertainty_penalty" in response.json()["error"]["message"]


def test_the_servers_default_penalty_applies_when_the_url_has_none(tmp_path: Path) -> None:
    """veRL's reward loop builds its /classify URL itself: the server-wide λ is how it gets the penalty."""
    settings = settings_for(make_ensemble_bundle(tmp_path / "rm"), trainer_uncertainty_penalty=LAMBDA)
    with LiveServer(create_app(settings)) as server:
        expected, direct = penalised_reference(server.url, [(PROMPT, RESPONSE)], LAMBDA)
        text = {"input": [PROMPT + RESPONSE], "activation": False}
        default = httpx.post(f"{server.url}/classify", json=text, timeout=30).json()
        assert default["data"][0]["probs"][-1] == pytest.approx(float(expected[0]), abs=1e-4)
        explicit_off = post_penalised(server.url, "/classify", text, 0).json()
        assert explicit_off["data"][0]["probs"][-1] == pytest.approx(direct["scores"][0], abs=1e-4)
