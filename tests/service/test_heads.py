"""Bundles with more than one output (issue 13): ensemble uncertainty, a length head, a length correction.

Real tiny graphs (tests/bundle_factory.py) on real servers: an older bundle scores exactly as before,
the correction is applied exactly as the manifest says, the uncertainty reaches every scoring route and
the watch, no output depends on its batch-mates, and a non-finite uncertainty is never served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.bundle import MANIFEST_NAME
from service.encoding import pad_batch
from service.model import LoadedModel, ModelLoadError, load_model
from tests.bundle_factory import POISON_WORD, make_tiny_bundle
from tests.service.conftest import LiveServer, concurrently, live_servers, settings_for

SLOPE, MEAN_LENGTH, MEAN, STD = 0.25, 3.0, 0.5, 2.0
CORRECTION = {"kind": "linear", "slope": SLOPE, "intercept": 1.0, "unit": "answer_tokens",
              "mean_length": MEAN_LENGTH, "fitted_on": 400, "pearson": -0.6}  # fmt: skip
LONG_ANSWER = "word " * 200
PAIRS = [  # answers of 2, 0 and 13 MiniLM tokens; the last is cut to 128 - 3 specials - 2 question tokens
    ("What is the capital of France?", "Paris."),
    ("Anything?", ""),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then bake."),
    ("Q?", LONG_ANSWER),
]
ANSWER_TOKENS = np.array([2, 0, 13, 123])


def body(pairs: list[tuple[str, str]]) -> dict[str, object]:
    return {"pairs": [{"question": q, "answer": a} for q, a in pairs]}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heads")
    stats = {"score_mean": MEAN, "score_std": STD}
    make_tiny_bundle(root / "plain", seed=0, **stats)
    make_tiny_bundle(root / "corrected", seed=0, length_correction=CORRECTION, **stats)
    make_tiny_bundle(root / "ensemble", seed=3, quality_heads=4, length_head=True, **stats)
    make_tiny_bundle(root / "poison", seed=4, quality_heads=3, poison_uncertainty=True, **stats)
    return root


@pytest.fixture(scope="module")
def servers(bundles: Path) -> Iterator[dict[str, LiveServer]]:
    configs = {
        "plain": settings_for(bundles / "plain"),
        "corrected": settings_for(bundles / "corrected"),
        "uncorrected": settings_for(bundles / "corrected", length_correction=False),
        "ensemble": settings_for(bundles / "ensemble", watch_window=50, watch_min_items=4),
        "poison": settings_for(bundles / "poison"),
    }
    with live_servers(configs) as live:
        yield live


def post(server: LiveServer, route: str, payload: dict[str, object]) -> dict:
    response = httpx.post(f"{server.url}{route}", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def alone(model: LoadedModel, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Every graph output of each pair run alone through the model's backend: {name: [n]}."""
    encoded = model.encoder.encode([q for q, _ in pairs], [a for _, a in pairs])
    runs = [model.backend.run(pad_batch([e], model.encoder.pad_token_id)) for e in encoded]
    return {name: np.array([run[name][0] for run in runs]) for name in model.backend.output_names}


def test_an_older_bundle_scores_exactly_as_its_graph_and_says_it_has_no_extras(
    servers: dict[str, LiveServer], bundles: Path
) -> None:
    model = load_model(bundles / "plain", "auto", 1)
    encoded = model.encoder.encode([q for q, _ in PAIRS], [a for _, a in PAIRS])
    outputs = model.backend.run(pad_batch(encoded, model.encoder.pad_token_id))
    served = model.served(outputs, np.array([e.answer_tokens for e in encoded]))
    assert served.scores is outputs["score"] and served.uncertainty is None  # untouched, not recomputed
    plain = post(servers["plain"], "/score", body(PAIRS))
    switched_off = post(servers["uncorrected"], "/score", body(PAIRS))
    assert plain["scores"] == switched_off["scores"]  # same graph, no correction: the same numbers
    assert plain["uncertainty"] is None and plain["uncertainty_normalized"] is None
    summary = post_get(servers["plain"], "/v1/models")["data"][0]
    assert summary["outputs"] == ["score"] and summary["heads"] is None
    assert summary["length_correction"] is None


def post_get(server: LiveServer, route: str) -> dict:
    return httpx.get(f"{server.url}{route}", timeout=30).json()


def test_the_length_correction_is_applied_exactly_before_normalisation(
    servers: dict[str, LiveServer],
) -> None:
    corrected = post(servers["corrected"], "/score", body(PAIRS))
    raw = post(servers["uncorrected"], "/score", body(PAIRS))
    assert corrected["truncated"] == [False, False, False, True]
    # corrected = score - 0.25 * (answer tokens - 3): +0.25, +0.75, -2.5 and -30 (the long answer as cut)
    expected = np.array(raw["scores"]) + np.array([0.25, 0.75, -2.5, -30.0])
    np.testing.assert_allclose(corrected["scores"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        corrected["scores"], np.array(raw["scores"]) - SLOPE * (ANSWER_TOKENS - 3.0), atol=1e-12
    )
    np.testing.assert_allclose(corrected["normalized"], (expected - MEAN) / STD, atol=1e-12)
    reward = post(
        servers["corrected"],
        "/get_reward",
        {"query": [q + a for q, a in PAIRS], "prompts": [q for q, _ in PAIRS]},
    )
    np.testing.assert_allclose(
        reward["rewards"], expected, atol=1e-4
    )  # every route serves the corrected score
    on = post_get(servers["corrected"], "/v1/models")["data"][0]["length_correction"]
    off = post_get(servers["uncorrected"], "/v1/models")["data"][0]["length_correction"]
    assert on == {**CORRECTION, "applied": True} and off == {**CORRECTION, "applied": False}


def test_uncertainty_is_served_on_every_scoring_route_and_fed_to_the_watch(
    servers: dict[str, LiveServer], bundles: Path
) -> None:
    server = servers["ensemble"]
    expected = alone(load_model(bundles / "ensemble", "auto", 1), PAIRS)
    scored = post(server, "/score", body(PAIRS))
    np.testing.assert_allclose(scored["scores"], expected["score"], atol=1e-4)
    np.testing.assert_allclose(scored["uncertainty"], expected["uncertainty"], atol=1e-4)
    np.testing.assert_allclose(
        scored["uncertainty_normalized"], np.array(scored["uncertainty"]) / STD, rtol=1e-12
    )
    assert all(u > 0 for u in scored["uncertainty"])  # four different heads disagree
    groups = post(server, "/score/groups", {"groups": [{"question": PAIRS[0][0], "answers": [PAIRS[0][1]]},
                                                      {"question": PAIRS[2][0], "answers": [PAIRS[2][1]]}]})  # fmt: skip
    assert [g["uncertainty"][0] for g in groups["groups"]] == pytest.approx(
        [scored["uncertainty"][0], scored["uncertainty"][2]], abs=1e-4
    )
    assert groups["groups"][0]["uncertainty_normalized"][0] == pytest.approx(
        scored["uncertainty"][0] / STD, abs=1e-4
    )
    reward = post(
        server, "/get_reward", {"query": [q + a for q, a in PAIRS], "prompts": [q for q, _ in PAIRS]}
    )
    np.testing.assert_allclose(reward["extra_logs"]["rm_uncertainty"], scored["uncertainty"], atol=1e-4)
    summary = post_get(server, "/v1/models")["data"][0]
    assert summary["outputs"] == ["score", "uncertainty", "length_score"]
    assert summary["heads"] == {"quality": 4, "length": True}
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    gauge = families["rlhf_uncertainty_mean"].samples[0].value
    assert math.isfinite(gauge) and gauge > 0  # the watch got every item's uncertainty


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_no_output_depends_on_its_batch_mates(bundles: Path, precision: str) -> None:
    model = load_model(bundles / "ensemble", precision, 1)  # type: ignore[arg-type]
    pairs = [*PAIRS, ("", "x " * 40), ("Tell me about the sea. " * 9, "It is large.")]
    encoded = model.encoder.encode([q for q, _ in pairs], [a for _, a in pairs])
    together = model.backend.run(pad_batch(encoded[::-1], model.encoder.pad_token_id))
    single = alone(model, pairs)
    assert set(together) == {"score", "uncertainty", "length_score"}
    for name, values in together.items():
        np.testing.assert_allclose(values[::-1], single[name], atol=1e-4, err_msg=name)


def test_concurrent_requests_each_get_their_own_uncertainty(
    servers: dict[str, LiveServer], bundles: Path
) -> None:
    rng = np.random.default_rng(5)
    words = ["bread", "salt", "sea", "tea", "paris", "cake", "oven"]
    requests = [[(" ".join(rng.choice(words, int(rng.integers(0, 20)))), " ".join(rng.choice(words, int(rng.integers(0, 40)))))
                 for _ in range(int(rng.integers(1, 6)))] for _ in range(12)]  # fmt: skip
    model = load_model(bundles / "ensemble", "auto", 1)
    got = concurrently(
        lambda k: post(servers["ensemble"], "/score", body(requests[k]))["uncertainty"], len(requests)
    )
    for k, pairs in enumerate(requests):
        np.testing.assert_allclose(got[k], alone(model, pairs)["uncertainty"], atol=1e-4)


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("/score", body([("Is this safe?", f"It is {POISON_WORD}.")])),
        ("/score/groups", {"groups": [{"question": "Is this safe?", "answers": ["Yes.", POISON_WORD]}]}),
        ("/get_reward", {"query": [f"Q: {POISON_WORD}"], "prompts": ["Q:"]}),
    ],
)
def test_a_non_finite_uncertainty_is_never_served(
    servers: dict[str, LiveServer], route: str, payload: dict[str, object]
) -> None:
    server = servers["poison"]
    response = httpx.post(f"{server.url}{route}", json=payload, timeout=30)
    assert response.status_code == 500, response.text
    assert response.json()["error"]["type"] == "inference_failed"
    assert "uncertainty" in response.json()["error"]["message"]
    fine = post(server, "/score", body([("Is this safe?", "Yes, it is.")]))  # the same model keeps serving
    assert all(math.isfinite(u) for u in fine["uncertainty"])
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_graph_must_have_the_outputs_its_manifest_heads_promise(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "lies", seed=0)
    path = bundle / MANIFEST_NAME
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "heads": {"quality": 4, "length": False}}))
    with pytest.raises(ModelLoadError, match="promise"):
        load_model(bundle, "auto", 1)
    ensemble = make_tiny_bundle(tmp_path / "unlabelled", seed=3, quality_heads=4)
    path = ensemble / MANIFEST_NAME
    raw = json.loads(path.read_text())
    del raw["heads"]  # a manifest without heads serves what the graph has
    path.write_text(json.dumps(raw))
    assert load_model(ensemble, "auto", 1).has_uncertainty


def test_the_client_returns_raw_scores_and_the_uncertainty_from_both_routes(
    servers: dict[str, LiveServer],
) -> None:
    from service.client import RewardClient

    direct = post(servers["ensemble"], "/score", body(PAIRS))
    with RewardClient(servers["ensemble"].url, chunk_size=3) as client:
        scored = client.score(PAIRS)
        rewarded = client.get_reward([q + a for q, a in PAIRS], [q for q, _ in PAIRS])
    for result in (scored, rewarded):  # /get_reward's raw scores are its "rewards", not its [0, 1] "scores"
        np.testing.assert_allclose(result.scores, direct["scores"], atol=1e-4)
        assert result.uncertainty is not None
        np.testing.assert_allclose(result.uncertainty, direct["uncertainty"], atol=1e-4)
    with RewardClient(servers["plain"].url) as client:
        plain = client.score(PAIRS)
    assert plain.uncertainty is not None and np.isnan(plain.uncertainty).all()  # no ensemble: NaN
