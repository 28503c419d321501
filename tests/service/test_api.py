"""Every route and every error code, against a real uvicorn server on a real socket."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.bundle import load_bundle
from service.encoding import pad_batch
from service.model import load_model
from tests.service.conftest import LiveServer, settings_for, slow_factory

PAIRS = [
    {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast, then bake."},
    {"question": "", "answer": ""},
    {"question": "What is the capital of France?", "answer": "Paris."},
]
CONTRACT_METRICS = {
    "rlhf_requests", "rlhf_request_duration_seconds", "rlhf_queue_depth", "rlhf_queue_wait_seconds",
    "rlhf_batch_pairs", "rlhf_batch_tokens", "rlhf_padding_ratio", "rlhf_inference_seconds",
    "rlhf_scored_pairs", "rlhf_truncated_pairs", "rlhf_rejected", "rlhf_score", "rlhf_ready",
    "rlhf_model_info", "rlhf_reloads",
}  # fmt: skip


def offline_scores(bundle: Path, pairs: list[dict[str, str]]) -> np.ndarray:
    """Each pair scored alone straight through onnxruntime: what the service must return."""
    model = load_model(bundle, "auto", 1)
    encoded = model.encoder.encode([p["question"] for p in pairs], [p["answer"] for p in pairs])
    return np.array(
        [model.backend.run(pad_batch([e], model.encoder.pad_token_id))["score"][0] for e in encoded]
    )


def test_score_returns_each_pair_its_own_score_in_order(shared_live: LiveServer, bundle_v1: Path) -> None:
    response = httpx.post(f"{shared_live.url}/score", json={"pairs": PAIRS})
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["scores"], offline_scores(bundle_v1, PAIRS), atol=1e-4)
    manifest = load_bundle(bundle_v1).manifest
    expected_norm = (np.array(body["scores"]) - manifest.score.mean) / manifest.score.std
    np.testing.assert_allclose(body["normalized"], expected_norm, rtol=1e-9)
    assert body["truncated"] == [False, False, False]
    assert body["model"] == {"name": "tiny-rm", "version": "1"}
    assert response.headers["x-model-name"] == "tiny-rm"
    assert response.headers["x-model-version"] == "1"
    assert all(math.isfinite(s) for s in body["scores"])


def test_concurrent_clients_each_get_their_own_scores_in_order(
    shared_live: LiveServer, bundle_v1: Path
) -> None:
    rng = np.random.default_rng(7)
    words = ["bread", "water", "salt", "yeast", "oven", "sea", "dragon", "tea", "paris", "france", "cake"]
    requests = [
        [{"question": " ".join(rng.choice(words, int(rng.integers(0, 30)))), "answer": " ".join(rng.choice(words, int(rng.integers(0, 60))))}
         for _ in range(int(rng.integers(1, 12)))]
        for _ in range(16)
    ]  # fmt: skip
    expected = [offline_scores(bundle_v1, r) for r in requests]
    got: dict[int, list[float]] = {}

    def client(k: int) -> None:
        got[k] = httpx.post(f"{shared_live.url}/score", json={"pairs": requests[k]}, timeout=30).json()[
            "scores"
        ]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, scores in enumerate(expected):
        np.testing.assert_allclose(got[k], scores, atol=1e-4)


def test_a_client_that_leaves_is_not_scored(bundle_v1: Path) -> None:
    app = create_app(settings_for(bundle_v1, batch_wait_ms=0), backend_factory=slow_factory(0.4))
    with LiveServer(app) as server:
        backend = app.state.service.model.backend
        rows_before = backend.rows
        blocker = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/score", json={"pairs": PAIRS[:1]})
        )
        blocker.start()
        threading.Event().wait(0.1)  # the blocker is being scored now
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}/score", json={"pairs": PAIRS * 3}, timeout=0.15)
        blocker.join()
        threading.Event().wait(0.5)
        assert backend.rows - rows_before == 1  # the 9 pairs of the client that left never ran
        text = httpx.get(f"{server.url}/metrics").text
        assert 'rlhf_requests_total{route="/score",status="499"} 1.0' in text
        assert app.state.service.batcher._admitted_pairs == 0


def test_int8_is_served_by_default_when_shipped(shared_live: LiveServer) -> None:
    summary = httpx.get(f"{shared_live.url}/v1/models").json()["data"][0]
    assert summary["precision"] == "int8"
    assert summary["precisions"] == ["fp32", "int8"]
    assert summary["version"] == "1"


def test_long_pair_is_truncated_and_reported(shared_live: LiveServer) -> None:
    long_pair = {"question": "word " * 400, "answer": "short answer"}
    body = httpx.post(f"{shared_live.url}/score", json={"pairs": [long_pair, PAIRS[0]]}).json()
    assert body["truncated"] == [True, False]


def test_empty_request_is_valid(shared_live: LiveServer) -> None:
    body = httpx.post(f"{shared_live.url}/score", json={"pairs": []}).json()
    assert body["scores"] == [] and body["model"]["version"] == "1"


def test_groups_give_baselines_and_advantages(shared_live: LiveServer) -> None:
    request = {
        "groups": [
            {"question": "How do I bake bread?", "answers": ["Knead and bake.", "Buy it.", "No idea."]},
            {"question": "Hi", "answers": ["Hello!"]},
        ]
    }
    response = httpx.post(f"{shared_live.url}/score/groups", json=request)
    assert response.status_code == 200, response.text
    first, single = response.json()["groups"]
    scores = np.array(first["scores"])
    assert first["mean"] == pytest.approx(scores.mean())
    loo = [(scores.sum() - s) / 2 for s in scores]
    np.testing.assert_allclose(first["leave_one_out_baselines"], loo)
    np.testing.assert_allclose(first["advantages"], scores - np.array(loo))
    flat = httpx.post(
        f"{shared_live.url}/score",
        json={
            "pairs": [
                {"question": "How do I bake bread?", "answer": a} for a in request["groups"][0]["answers"]
            ]
        },
    ).json()
    np.testing.assert_allclose(scores, flat["scores"], atol=1e-4)
    assert single["advantages"] == [0.0] and single["leave_one_out_baselines"] == single["scores"]


def test_get_reward_splits_prompt_from_query(shared_live: LiveServer) -> None:
    prompt = "How do I bake bread?"
    answer = " Mix flour, water, salt and yeast, then bake."
    response = httpx.post(
        f"{shared_live.url}/get_reward",
        json={"query": [prompt + answer], "prompts": [prompt], "labels": ["x"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    direct = httpx.post(f"{shared_live.url}/score", json={"pairs": [{"question": prompt, "answer": answer}]})
    assert body["rewards"] == pytest.approx(direct.json()["scores"], abs=1e-4)
    normalized = direct.json()["normalized"][0]
    assert body["scores"] == pytest.approx([1 / (1 + math.exp(-normalized))], abs=1e-6)  # calibrated
    assert body["extra_logs"]["rm_truncated"] == [0.0] and "rm_uncertainty" not in body["extra_logs"]
    mismatch = httpx.post(f"{shared_live.url}/get_reward", json={"query": ["a", "b"], "prompts": ["a"]})
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["type"] == "validation_failed"


def test_health_ready_models_docs(shared_live: LiveServer) -> None:
    assert httpx.get(f"{shared_live.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{shared_live.url}/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "1"
    assert ready.headers["x-model-version"] == "1"
    models = httpx.get(f"{shared_live.url}/v1/models").json()
    assert models["data"][0]["sha256"] == load_bundle(shared_live.settings.bundle or Path()).sha256
    openapi = httpx.get(f"{shared_live.url}/openapi.json").json()
    routes = ("/score", "/score/groups", "/get_reward", "/classify", "/v1/embeddings", "/slime/reward")
    for route in (*routes, "/healthz", "/readyz", "/metrics", "/v1/models"):
        assert route in openapi["paths"], route
    assert "/admin/reload" in openapi["paths"]
    assert httpx.get(f"{shared_live.url}/docs").status_code == 200


def test_metrics_parse_and_carry_the_contract_names(shared_live: LiveServer) -> None:
    httpx.post(f"{shared_live.url}/score", json={"pairs": PAIRS})
    text = httpx.get(f"{shared_live.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    missing = CONTRACT_METRICS - set(families)
    assert not missing, missing
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("rlhf_ready", ())] == 1
    assert samples[("rlhf_requests_total", (("route", "/score"), ("status", "200")))] >= 1
    assert samples[("rlhf_scored_pairs_total", ())] >= len(PAIRS)
    info = [s for s in families["rlhf_model_info"].samples if s.value == 1]
    assert info and info[0].labels["version"] == "1" and info[0].labels["precision"] == "int8"


# ---- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"pairs": [{"question": "q"}]},  # answer missing
        {"pairs": [{"question": 1, "answer": "a"}]},  # wrong type
        {"pairs": "nope"},
        {"pairz": []},  # unknown field
        {"groups": [{"question": "q", "answers": []}]},  # (sent to /score: unknown field)
    ],
)
def test_malformed_json_is_422_with_a_message(shared_live: LiveServer, body: dict[str, object]) -> None:
    response = httpx.post(f"{shared_live.url}/score", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_failed"
    assert "pairs" in error["message"] or "groups" in error["message"]


def test_not_json_is_422(shared_live: LiveServer) -> None:
    response = httpx.post(
        f"{shared_live.url}/score", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "validation_failed"


def test_empty_group_is_422(shared_live: LiveServer) -> None:
    response = httpx.post(
        f"{shared_live.url}/score/groups", json={"groups": [{"question": "q", "answers": []}]}
    )
    assert response.status_code == 422


@pytest.fixture(scope="module")
def limited(bundle_v1: Path) -> Iterator[LiveServer]:
    settings = settings_for(
        bundle_v1, max_pairs_per_request=4, max_body_bytes=4096, max_field_chars=200, max_queue_pairs=64
    )
    with LiveServer(create_app(settings)) as server:
        yield server


def test_413_too_many_pairs(limited: LiveServer) -> None:
    response = httpx.post(f"{limited.url}/score", json={"pairs": [PAIRS[0]] * 5})
    assert response.status_code == 413
    assert "RLHF_MAX_PAIRS_PER_REQUEST" in response.json()["error"]["message"]
    groups = {"groups": [{"question": "q", "answers": ["a"] * 3}, {"question": "q", "answers": ["a"] * 2}]}
    assert httpx.post(f"{limited.url}/score/groups", json=groups).status_code == 413


def test_413_field_too_long(limited: LiveServer) -> None:
    response = httpx.post(f"{limited.url}/score", json={"pairs": [{"question": "x" * 201, "answer": ""}]})
    assert response.status_code == 413
    assert "pairs[0].question" in response.json()["error"]["message"]
    response = httpx.post(f"{limited.url}/get_reward", json={"query": ["y" * 201]})
    assert response.status_code == 413


def test_413_body_bytes_with_content_length(limited: LiveServer) -> None:
    body = b'{"pairs": [{"question": "' + b"x" * 5000 + b'", "answer": ""}]}'
    response = httpx.post(f"{limited.url}/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
    assert response.headers["x-model-version"] == "1"  # every response names the model, errors too


def test_413_chunked_body_without_content_length(limited: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"pairs": [{"question": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'", "answer": ""}]}'

    request = httpx.Request(
        "POST", f"{limited.url}/score", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    with httpx.Client() as client:
        response = client.send(request)
    assert response.status_code == 413
    # a small chunked body still works
    small = httpx.Request(
        "POST", f"{limited.url}/score", content=iter([b'{"pairs": [', b'{"question": "q", "answer": "a"}]}']),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with httpx.Client() as client:
        assert client.send(small).status_code == 200


def test_413_is_counted_in_metrics(limited: LiveServer) -> None:
    httpx.post(f"{limited.url}/score", content=b"x" * 5000, headers={"content-type": "application/json"})
    text = httpx.get(f"{limited.url}/metrics").text
    rejected = {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "rlhf_rejected"
        for s in f.samples
        if s.name == "rlhf_rejected_total"
    }
    assert rejected["too_large"] >= 1
    by_route = {
        (s.labels["route"], s.labels["status"])
        for f in text_string_to_metric_families(text)
        if f.name == "rlhf_requests"
        for s in f.samples
        if s.name == "rlhf_requests_total"
    }
    assert ("/score", "413") in by_route, "a request refused before routing is labelled with its route"


@pytest.fixture(scope="module")
def keyed(bundle_root: Path) -> Iterator[LiveServer]:
    settings = settings_for(bundle_root / "rm-v1", api_key="score-key", admin_key="admin-key")
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize("route", ["/score", "/get_reward", "/score/groups"])
def test_401_without_or_with_wrong_scoring_key(keyed: LiveServer, route: str) -> None:
    body = {"/score": {"pairs": PAIRS}, "/get_reward": {"query": ["q a"]}, "/score/groups": {"groups": []}}[
        route
    ]
    missing = httpx.post(f"{keyed.url}{route}", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.headers["x-model-name"] == "tiny-rm"
    wrong = httpx.post(f"{keyed.url}{route}", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    admin_key_is_not_a_scoring_key = httpx.post(
        f"{keyed.url}{route}", json=body, headers={"Authorization": "Bearer admin-key"}
    )
    assert admin_key_is_not_a_scoring_key.status_code == 401
    right = httpx.post(f"{keyed.url}{route}", json=body, headers={"Authorization": "Bearer score-key"})
    assert right.status_code == 200


def test_401_admin_key(keyed: LiveServer) -> None:
    body = {"bundle": "rm-v1"}
    assert httpx.post(f"{keyed.url}/admin/reload", json=body).status_code == 401
    scoring_key = httpx.post(
        f"{keyed.url}/admin/reload", json=body, headers={"Authorization": "Bearer score-key"}
    )
    assert scoring_key.status_code == 401
    ok = httpx.post(f"{keyed.url}/admin/reload", json=body, headers={"Authorization": "Bearer admin-key"})
    assert ok.status_code == 200, ok.text


def test_probes_and_metrics_need_no_key(keyed: LiveServer) -> None:
    for route in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{keyed.url}{route}").status_code == 200


def test_429_with_retry_after_when_queue_is_full(bundle_v1: Path) -> None:
    settings = settings_for(bundle_v1, max_queue_pairs=4, max_pairs_per_request=4, retry_after_seconds=3)
    app = create_app(settings, backend_factory=slow_factory(0.4))
    with LiveServer(app) as server:
        results: list[int] = []

        def occupy() -> None:
            results.append(
                httpx.post(f"{server.url}/score", json={"pairs": PAIRS[:3]}, timeout=10).status_code
            )

        holder = threading.Thread(target=occupy)
        holder.start()
        deadline = 50
        while app.state.service.batcher._admitted_pairs < 3 and deadline:  # wait until admitted
            threading.Event().wait(0.01)
            deadline -= 1
        refused = httpx.post(f"{server.url}/score", json={"pairs": PAIRS[:2]})
        holder.join()
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["type"] == "overloaded"
        assert results == [200]
        assert httpx.post(f"{server.url}/score", json={"pairs": PAIRS[:2]}).status_code == 200


def test_503_until_a_model_is_loaded(bundle_root: Path) -> None:
    app = create_app(settings_for(None, bundle_root=bundle_root))
    with LiveServer(app, wait_ready=False) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["type"] == "not_ready"
        assert "x-model-version" not in ready.headers
        score = httpx.post(f"{server.url}/score", json={"pairs": PAIRS})
        assert score.status_code == 503 and "RLHF_BUNDLE" in score.json()["error"]["message"]
        assert httpx.get(f"{server.url}/v1/models").status_code == 503
        loaded = httpx.post(f"{server.url}/admin/reload", json={"bundle": "rm-v2"})
        assert loaded.status_code == 200 and loaded.json()["previous"] is None
        assert loaded.json()["model"]["input_format"] == "pair"  # the same summary as /v1/models
        assert loaded.json()["model"]["chat_template_sha256"] is None
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert httpx.post(f"{server.url}/score", json={"pairs": PAIRS}).json()["model"]["version"] == "2"


def test_503_when_the_configured_bundle_is_corrupt(tmp_path: Path) -> None:
    from tests.bundle_factory import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "rm")
    (bundle / "model.int8.onnx").write_bytes(b"garbage")
    with LiveServer(create_app(settings_for(bundle)), wait_ready=False) as server:
        for _ in range(100):
            ready = httpx.get(f"{server.url}/readyz")
            if "refused" in ready.text:
                break
            threading.Event().wait(0.02)
        assert ready.status_code == 503
        assert "corrupt" in ready.json()["error"]["message"]


def test_split_rendered_and_group_baselines_by_hand() -> None:
    from service.api import group_baselines
    from service.rendered import split_rendered

    assert split_rendered("Q: hi A: hello", "Q: hi") == ("Q: hi", " A: hello")
    assert split_rendered("something else", "Q: hi") == ("Q: hi", "something else")  # no prefix, no marker
    assert split_rendered("only a query", "") == ("", "only a query")
    assert split_rendered("only a query") == ("", "only a query")
    hh = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: And?\n\nAssistant: Bye."
    assert split_rendered(hh) == (hh[: -len(" Bye.")], " Bye.")  # after the last marker, space kept
    assert split_rendered(hh, "\n\nHuman: Hi?") == ("\n\nHuman: Hi?", hh[len("\n\nHuman: Hi?") :])
    assert split_rendered(hh, "not a prefix") == (hh[: -len(" Bye.")], " Bye.")  # the marker rule
    mean, loo = group_baselines(np.array([1.0, 2.0, 6.0]))
    assert mean == 3.0 and loo.tolist() == [4.0, 3.5, 1.5]
    mean, loo = group_baselines(np.array([5.0]))
    assert mean == 5.0 and loo.tolist() == [5.0]
