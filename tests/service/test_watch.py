"""The live watch: window math against numpy, NaN rules, reset on reload, and the gauges of a real server
moving when its workload shifts (the same gauges deploy/prometheus/alerts.yml alerts on)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service.app import create_app
from service.metrics import ServiceMetrics
from service.model import load_model
from service.settings import ServiceSettings
from service.watch import Reference, ScoreWatch, SlidingWindow, WindowStats
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for

WATCH_GAUGES = (
    "rlhf_watch_window_items",
    "rlhf_score_drift_std",
    "rlhf_score_std_ratio",
    "rlhf_score_length_correlation",
    "rlhf_truncated_share",
    "rlhf_uncertainty_mean",
)


def expected(scores: list[float], lengths: list[int], truncated: list[bool]) -> dict[str, float]:
    s, length = np.array(scores, dtype=np.float64), np.array(lengths, dtype=np.float64)
    return {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "r": float(np.corrcoef(s, length)[0, 1]),
        "truncated": float(np.mean(truncated)),
    }


def assert_matches(stats: WindowStats, want: dict[str, float]) -> None:
    assert stats.mean == pytest.approx(want["mean"], abs=1e-9)
    assert stats.std == pytest.approx(want["std"], abs=1e-9)
    assert stats.length_correlation == pytest.approx(want["r"], abs=1e-9)
    assert stats.truncated_share == pytest.approx(want["truncated"], abs=1e-12)


# ---- the window ---------------------------------------------------------------------------------------
def test_window_matches_numpy_on_hand_data_and_wraps_around() -> None:
    window = SlidingWindow(4)
    window.add([1.0, 2.0, 3.0], [10, 30, 20], [False, True, False])
    assert len(window) == 3
    assert_matches(window.stats(), expected([1.0, 2.0, 3.0], [10, 30, 20], [False, True, False]))
    window.add([4.0, -5.5], [5, 50], [True, True])  # the 1.0 item falls out; the ring wraps
    assert len(window) == 4
    assert_matches(
        window.stats(), expected([2.0, 3.0, 4.0, -5.5], [30, 20, 5, 50], [True, False, True, True])
    )
    assert window.stats().truncated_share == 0.75
    window.add([9.0], [1], [False])
    assert_matches(
        window.stats(), expected([3.0, 4.0, -5.5, 9.0], [20, 5, 50, 1], [False, True, True, False])
    )


def test_window_matches_numpy_over_a_long_stream_of_mixed_batches() -> None:
    """Running sums stay exact enough over many wrap-arounds and resyncs, with scores far from zero."""
    rng = np.random.default_rng(7)
    size = 53
    window = SlidingWindow(size)
    scores: list[float] = []
    lengths: list[int] = []
    truncated: list[bool] = []
    for step in range(400):
        k = int(rng.integers(1, 130))  # sometimes more than the window holds
        offset = 1e4 if step > 200 else 0.0  # a big level shift: cancellation would show here
        batch_s = (offset + rng.normal(0, 0.01 + step / 100, k)).tolist()
        batch_l = rng.integers(0, 5000, k).tolist()
        batch_t = (rng.random(k) < 0.3).tolist()
        window.add(batch_s, batch_l, batch_t)
        scores += batch_s
        lengths += batch_l
        truncated += batch_t
        tail = slice(-size, None)
        want = expected(scores[tail], lengths[tail], truncated[tail])
        stats = window.stats()
        assert stats.items == min(size, len(scores))
        assert stats.mean == pytest.approx(want["mean"], rel=1e-12, abs=1e-9)
        assert stats.std == pytest.approx(want["std"], rel=1e-6)
        assert stats.length_correlation == pytest.approx(want["r"], abs=1e-6)
        assert stats.truncated_share == pytest.approx(want["truncated"], abs=1e-12)


def test_zero_variance_gives_nan_correlation_never_a_crash() -> None:
    empty = SlidingWindow(5).stats()
    assert empty.items == 0 and all(
        math.isnan(v) for v in (empty.mean, empty.std, empty.length_correlation, empty.truncated_share)
    )
    same_length = SlidingWindow(10)
    same_length.add([0.1, 0.5, 0.9, 2.0], [3, 3, 3, 3], [False] * 4)  # "I'm sorry." every time
    assert math.isnan(same_length.stats().length_correlation)
    assert same_length.stats().std == pytest.approx(float(np.std([0.1, 0.5, 0.9, 2.0])))
    same_score = SlidingWindow(3)
    for _ in range(5):  # past a resync, whose shift is a computed mean that may differ by an ulp
        same_score.add([7.3, 7.3], [1, 900], [False, False])
    stats = same_score.stats()
    assert stats.std == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(stats.length_correlation)
    one = SlidingWindow(3)
    one.add([1.5], [4], [True])
    assert one.stats().std == 0.0 and math.isnan(one.stats().length_correlation)


def test_uncertainty_counts_only_items_that_carry_one() -> None:
    window = SlidingWindow(4)
    window.add([1.0, 2.0], [1, 2], [False, False])  # no uncertainty yet (None)
    assert window.stats().uncertainty_items == 0 and math.isnan(window.stats().uncertainty_mean)
    window.add([3.0, 4.0], [3, 4], [False, False], [0.1, math.nan])
    assert window.stats().uncertainty_items == 1
    assert window.stats().uncertainty_mean == pytest.approx(0.1)
    window.add([5.0, 6.0], [5, 6], [False, False], [0.3, 0.5])  # evicts two items without uncertainty
    assert window.stats().uncertainty_items == 3
    assert window.stats().uncertainty_mean == pytest.approx(0.3)
    window.add([7.0], [7], [False])  # evicts the 0.1 item
    assert window.stats().uncertainty_items == 2
    assert window.stats().uncertainty_mean == pytest.approx(0.4)


def test_non_finite_scores_are_skipped_and_shapes_checked() -> None:
    window = SlidingWindow(4)
    window.add([1.0, math.nan, 3.0, math.inf], [1, 2, 3, 4], [False, True, False, True])
    assert window.stats().items == 2
    assert_matches(window.stats(), expected([1.0, 3.0], [1, 3], [False, False]))
    with pytest.raises(ValueError, match="2 scores but 1 lengths"):
        window.add([1.0, 2.0], [1], [False, False])
    with pytest.raises(ValueError, match="at least 2"):
        SlidingWindow(1)


# ---- the watch: reference, minimum, reset -------------------------------------------------------------
def test_watch_reads_nan_below_the_minimum_then_reference_units() -> None:
    watch = ScoreWatch(size=10, min_items=4)
    ref = Reference(mean=1.0, std=2.0)
    assert watch.observe("m", ref, [3.0, 5.0, 1.0], [1, 3, 2], [False, True, False], [0.4, 0.4, 0.4])
    early = watch.reading()
    assert early.items == 3
    assert all(
        math.isnan(v)
        for v in (early.drift_std, early.std_ratio, early.length_correlation, early.truncated_share)
    )
    watch.observe("m", ref, [7.0], [4], [True], [0.8])
    reading = watch.reading()
    s = np.array([3.0, 5.0, 1.0, 7.0])
    assert reading.items == 4
    assert reading.drift_std == pytest.approx((s.mean() - 1.0) / 2.0)
    assert reading.std_ratio == pytest.approx(s.std() / 2.0)
    assert reading.length_correlation == pytest.approx(np.corrcoef(s, [1, 3, 2, 4])[0, 1])
    assert reading.truncated_share == 0.5
    assert reading.uncertainty_mean == pytest.approx(0.5 / 2.0)  # mean 0.5, in reference std units


def test_uncertainty_gauge_waits_for_enough_items_that_carry_one() -> None:
    watch = ScoreWatch(size=10, min_items=3)
    ref = Reference(0.0, 1.0)
    watch.observe("m", ref, [1.0, 2.0, 3.0], [1, 2, 3], [False] * 3)
    assert not math.isnan(watch.reading().drift_std)
    assert math.isnan(watch.reading().uncertainty_mean)
    watch.observe("m", ref, [1.0, 2.0], [1, 2], [False] * 2, [0.2, 0.2])
    assert math.isnan(watch.reading().uncertainty_mean)  # 2 of 3 needed
    watch.observe("m", ref, [1.0], [1], [False], [0.5])
    assert watch.reading().uncertainty_mean == pytest.approx(0.3)


def test_a_new_model_starts_an_empty_window_and_stale_items_stay_out() -> None:
    watch = ScoreWatch(size=10, min_items=2)
    assert watch.observe("old", Reference(0.0, 1.0), [1.0, 2.0, 3.0], [1, 2, 3], [False] * 3)  # adopted
    assert watch.reading().items == 3
    watch.serving("new")
    assert watch.reading().items == 0 and math.isnan(watch.reading().drift_std)
    assert not watch.observe("old", Reference(0.0, 1.0), [9.0, 9.0], [1, 2], [False] * 2)  # in flight
    assert watch.reading().items == 0
    assert watch.observe("new", Reference(10.0, 4.0), [6.0, 10.0], [1, 2], [False] * 2)
    assert watch.reading().drift_std == pytest.approx((8.0 - 10.0) / 4.0)
    with pytest.raises(ValueError, match="min_items"):
        ScoreWatch(size=10, min_items=11)


def gauges(text: str) -> dict[str, float]:
    """The watch gauges from real Prometheus text exposition."""
    values = {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(text)
        if family.name in WATCH_GAUGES
    }
    assert set(values) == set(WATCH_GAUGES)
    return values


def test_service_metrics_publish_the_watch(tmp_path: Path) -> None:
    metrics = ServiceMetrics(watch_window=8, watch_min_items=3)
    start = gauges(metrics.render().decode())
    assert start["rlhf_watch_window_items"] == 0
    assert all(math.isnan(v) for name, v in start.items() if name != "rlhf_watch_window_items")
    model = load_model(make_tiny_bundle(tmp_path / "rm", score_mean=0.5, score_std=2.0), "fp32", 1)
    metrics.set_model(model.name, model.version, model.bundle.sha256, model.precision)
    answers = ["a", "abc", "abcdef"]
    scores = np.array([1.0, 2.0, 4.5])
    metrics.observe_served(model, answers, scores, np.array([False, True, False]))
    got = gauges(metrics.render().decode())
    assert got["rlhf_watch_window_items"] == 3
    assert got["rlhf_score_drift_std"] == pytest.approx((scores.mean() - 0.5) / 2.0)
    assert got["rlhf_score_std_ratio"] == pytest.approx(scores.std() / 2.0)
    assert got["rlhf_score_length_correlation"] == pytest.approx(np.corrcoef(scores, [1, 3, 6])[0, 1])
    assert got["rlhf_truncated_share"] == pytest.approx(1 / 3)
    assert math.isnan(got["rlhf_uncertainty_mean"])
    metrics.set_model(model.name, "2", "another-sha", model.precision)  # a reload
    assert gauges(metrics.render().decode())["rlhf_watch_window_items"] == 0


def test_settings_refuse_a_minimum_above_the_window() -> None:
    assert ServiceSettings(watch_window=50, watch_min_items=50).watch_min_items == 50
    with pytest.raises(ValidationError, match="watch_min_items"):
        ServiceSettings(watch_window=50, watch_min_items=51)


# ---- a real server under a normal, then a shifted workload ---------------------------------------------
QUESTION_WORDS = [
    "how",
    "what",
    "where",
    "the",
    "a",
    "water",
    "bread",
    "sea",
    "house",
    "garden",
    "music",
    "river",
    "stone",
    "light",
    "dog",
    "cat",
]
# Answer words split by their score under the tiny fp32 graph (seed 0): answers drawn from one list or the
# other, whatever their length, give a normal workload whose score barely depends on length.
LOW_WORDS = [
    "no",
    "kind",
    "water",
    "light",
    "help",
    "window",
    "stone",
    "terrible",
    "good",
    "dog",
    "the",
    "road",
    "paper",
    "river",
    "yes",
]
HIGH_WORDS = [
    "please",
    "thanks",
    "apple",
    "wonderful",
    "question",
    "bread",
    "music",
    "cat",
    "cloud",
    "book",
    "garden",
    "chair",
    "city",
]
WINDOW = 200


def normal_workload(n: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "question": " ".join(rng.choice(QUESTION_WORDS, int(rng.integers(3, 15)))) + "?",
            "answer": " ".join(rng.choice(HIGH_WORDS if i % 2 else LOW_WORDS, int(rng.integers(1, 40)))),
        }
        for i in range(n)
    ]


@dataclass
class Served:
    """What the server answered for a workload, with the answer lengths the watch counts (characters)."""

    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


def score(client: httpx.Client, pairs: list[dict[str, str]]) -> Served:
    served = Served()
    for start in range(0, len(pairs), 50):
        chunk = pairs[start : start + 50]
        body = client.post("/score", json={"pairs": chunk}).raise_for_status().json()
        served.scores += body["scores"]
        served.truncated += body["truncated"]
        served.lengths += [len(p["answer"]) for p in chunk]
    return served


def watch_gauges(client: httpx.Client) -> dict[str, float]:
    return gauges(client.get("/metrics").raise_for_status().text)


def assert_gauges_match(got: dict[str, float], served: Served, ref: Reference) -> None:
    """The gauges equal the statistics numpy computes from the scores the server returned."""
    want = expected(served.scores, served.lengths, served.truncated)
    assert got["rlhf_watch_window_items"] == len(served.scores)
    assert got["rlhf_score_drift_std"] == pytest.approx((want["mean"] - ref.mean) / ref.std, abs=1e-6)
    assert got["rlhf_score_std_ratio"] == pytest.approx(want["std"] / ref.std, abs=1e-6)
    if math.isnan(want["r"]):
        assert math.isnan(got["rlhf_score_length_correlation"])
    else:
        assert got["rlhf_score_length_correlation"] == pytest.approx(want["r"], abs=1e-6)
    assert got["rlhf_truncated_share"] == pytest.approx(want["truncated"])
    assert math.isnan(got["rlhf_uncertainty_mean"])  # no bundle serves an uncertainty yet


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's r of a constant
def test_live_gauges_move_when_the_workload_shifts(tmp_path: Path) -> None:
    # fp32 only: the tiny int8 graph's coarse activation scale flattens the small score differences used here
    make_tiny_bundle(tmp_path / "calibration", with_int8=False)
    settings = settings_for(
        tmp_path / "calibration", watch_window=WINDOW, watch_min_items=100, bundle_root=tmp_path
    )
    normal = normal_workload(WINDOW, seed=0)
    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        # 1. the normal workload's own score distribution becomes the watched bundle's reference
        first = score(client, normal)
        ref = Reference(float(np.mean(first.scores)), float(np.std(first.scores)))
        make_tiny_bundle(tmp_path / "watched", with_int8=False, score_mean=ref.mean, score_std=ref.std)
        client.post("/admin/reload", json={"bundle": "watched"}).raise_for_status()
        empty = watch_gauges(client)
        assert empty["rlhf_watch_window_items"] == 0  # the reload started a new window
        assert math.isnan(empty["rlhf_score_drift_std"])

        # 2. below the minimum the gauges stay NaN; from it on they report
        score(client, normal[:99])
        assert math.isnan(watch_gauges(client)["rlhf_score_drift_std"])
        score(client, normal[99:])
        baseline = watch_gauges(client)
        assert_gauges_match(baseline, first, ref)
        assert abs(baseline["rlhf_score_drift_std"]) < 1e-4  # the same items as the reference
        assert baseline["rlhf_score_std_ratio"] == pytest.approx(1.0, abs=1e-4)
        assert abs(baseline["rlhf_score_length_correlation"]) < 0.4  # below the alert threshold
        assert baseline["rlhf_truncated_share"] == 0.0

        # 3. answers whose length tracks the score: the longer, the higher ("ocean" scores high)
        tracking = [
            {"question": "What is the sea like?", "answer": " ".join(["ocean"] * (1 + i % 40))}
            for i in range(WINDOW)
        ]
        shifted = score(client, tracking)
        got = watch_gauges(client)
        assert_gauges_match(got, shifted, ref)
        assert got["rlhf_score_length_correlation"] > 0.8  # the reward became a length proxy
        assert got["rlhf_score_drift_std"] > 1.0  # above the drift alert threshold
        assert got["rlhf_score_std_ratio"] < baseline["rlhf_score_std_ratio"]

        # 4. only very short answers: one length, so no correlation is defined (NaN, not a crash)
        short = score(client, [{"question": p["question"], "answer": "No."} for p in normal])
        got = watch_gauges(client)
        assert_gauges_match(got, short, ref)
        assert math.isnan(got["rlhf_score_length_correlation"])
        assert got["rlhf_score_std_ratio"] < 0.5  # answers alike, scores alike: the spread collapses

        # 5. questions longer than the bundle's max_length: every item is cut
        long_questions = [{"question": "tell me about the sea " * 40, "answer": p["answer"]} for p in normal]
        cut = score(client, long_questions)
        got = watch_gauges(client)
        assert_gauges_match(got, cut, ref)
        assert got["rlhf_truncated_share"] == 1.0
