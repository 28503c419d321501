"""Batch formation, admission control, scatter order, skipping departed clients, batch independence."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.backend import OnnxBackend
from service.batcher import Batcher, plan_subbatches
from service.encoding import pad_batch
from service.errors import Draining, Overloaded
from service.metrics import ServiceMetrics
from service.model import LoadedModel, load_model

TEXTS = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast."),
    ("", ""),
    ("What is 2+2?", "4"),
    ("Tell me about the sea. " * 12, "It is large and salty. " * 9),
    ("Hi", "Hello! How can I help you today? " * 3),
    ("word " * 300, "truncated for sure"),
]


class RecordingBackend:
    """The real onnxruntime backend, recording each run's shape (and optionally sleeping)."""

    def __init__(self, inner: OnnxBackend, delay: float = 0.0) -> None:
        self.inner = inner
        self.input_names = inner.input_names
        self.output_names = inner.output_names
        self.delay = delay
        self.shapes: list[tuple[int, int]] = []

    def health(self) -> None:
        self.inner.health()

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.shapes.append(batch["input_ids"].shape)
        time.sleep(self.delay)
        return self.inner.run(batch)


def recording_model(bundle: Path, precision: str = "auto", delay: float = 0.0) -> LoadedModel:
    def factory(path: Path, names: Sequence[str], threads: int) -> RecordingBackend:
        return RecordingBackend(OnnxBackend(path, names, threads), delay)

    model = load_model(bundle, precision, 1, factory)  # type: ignore[arg-type]
    model.backend.shapes.clear()  # type: ignore[attr-defined]
    return model


def make_batcher(**overrides: float) -> Batcher:
    values = dict(max_queue_pairs=1000, max_batch_tokens=4096, max_batch_pairs=4, subbatch_tokens=1024)
    values.update(overrides)
    return Batcher(ServiceMetrics(), batch_wait_s=float(values.pop("batch_wait_s", 0.01)), **values)  # type: ignore[arg-type]


def alone_scores(model: LoadedModel, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    encoded = model.encoder.encode([q for q, _ in pairs], [a for _, a in pairs])
    return np.array(
        [model.backend.run(pad_batch([e], model.encoder.pad_token_id))["score"][0] for e in encoded]
    )


def test_plan_subbatches_respects_pairs_and_padded_tokens() -> None:
    assert plan_subbatches([], 4, 100) == []
    assert plan_subbatches([5, 5, 5, 5, 5], 4, 1000) == [(0, 4), (4, 5)]
    assert plan_subbatches([10, 20, 30, 40], 8, 60) == [(0, 2), (2, 3), (3, 4)]  # 2*20 ok, 2*30 > 60? no: =60
    assert plan_subbatches([100, 200], 8, 50) == [(0, 1), (1, 2)]  # a row over budget runs alone
    # padding cut: [10, 11, 12] pads 3 of 36; adding 50 would pad 117 of 200 (> 20 %)
    assert plan_subbatches([10, 11, 12, 50, 52], 8, 1000, 0.2) == [(0, 3), (3, 5)]
    assert plan_subbatches([10, 11, 12, 50, 52], 8, 1000) == [(0, 5)]  # no padding limit
    assert plan_subbatches([5, 100, 500], 8, 10_000, 0.0) == [(0, 1), (1, 2), (2, 3)]
    for lengths in ([3] * 17, list(range(1, 40)), [7, 7, 90, 91, 300]):
        runs = plan_subbatches(lengths, 5, 200, 0.3)
        assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
        for start, end in runs:
            padded = (end - start) * lengths[end - 1]
            assert end - start <= 5
            assert end - start == 1 or (padded <= 200 and padded - sum(lengths[start:end]) <= 0.3 * padded)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_concurrent_requests_get_their_own_scores_in_order(bundle_v1: Path, precision: str) -> None:
    model = recording_model(bundle_v1, precision)
    expected = alone_scores(model, TEXTS)
    rng = np.random.default_rng(0)
    requests = [[int(i) for i in rng.integers(0, len(TEXTS), int(rng.integers(1, 9)))] for _ in range(20)]

    async def main() -> list[np.ndarray]:
        batcher = make_batcher()
        batcher.start()
        try:
            results = await asyncio.gather(
                *(batcher.submit(model, [TEXTS[i][0] for i in r], [TEXTS[i][1] for i in r]) for r in requests)
            )
        finally:
            await batcher.close()
        return [res.scores for res in results]

    got = asyncio.run(main())
    for request, scores in zip(requests, got, strict=True):
        np.testing.assert_allclose(scores, expected[request], atol=1e-4)  # batch independence, ≤ 1e-4
    shapes = model.backend.shapes  # type: ignore[attr-defined]
    assert max(b for b, _ in shapes) > 1, "requests were never batched together"
    assert all((b <= 4 and b * s <= 1024) or b == 1 for b, s in shapes)


def test_sub_batches_are_length_sorted(bundle_v1: Path) -> None:
    model = recording_model(bundle_v1)
    pairs = [("q " * n, "a") for n in (50, 3, 40, 5, 30, 7, 20, 9)]

    async def main() -> None:
        batcher = make_batcher(max_batch_pairs=2, subbatch_tokens=10_000, batch_wait_s=0.05)
        batcher.start()
        await asyncio.gather(*(batcher.submit(model, [q], [a]) for q, a in pairs))
        await batcher.close()

    asyncio.run(main())
    widths = [s for _, s in model.backend.shapes]  # type: ignore[attr-defined]
    assert widths == sorted(widths) and len(widths) == 4
    padded = [b * s for b, s in model.backend.shapes]  # type: ignore[attr-defined]
    assert sum(padded) < 8 * max(widths) * 0.7  # sorting avoided padding everything to the longest


def test_admission_refuses_at_once_and_releases_capacity(bundle_v1: Path) -> None:
    model = recording_model(bundle_v1, delay=0.2)

    async def main() -> None:
        batcher = make_batcher(max_queue_pairs=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(model, ["a"] * 3, ["b"] * 3))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(model, ["a"] * 2, ["b"] * 2)
        assert time.perf_counter() - started < 0.05 and refused.value.retry_after == 1
        assert len((await batcher.submit(model, ["x"], ["y"])).scores) == 1  # 3 + 1 fits
        await first
        assert len((await batcher.submit(model, ["a"] * 4, ["b"] * 4)).scores) == 4
        await batcher.close()
        with pytest.raises(Draining):
            await batcher.submit(model, ["a"], ["b"])

    asyncio.run(main())


def test_requests_whose_client_left_are_skipped(bundle_v1: Path) -> None:
    model = recording_model(bundle_v1, delay=0.15)

    async def main() -> None:
        batcher = make_batcher(batch_wait_s=0.0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(model, ["block"], ["ing"]))
        await asyncio.sleep(0.05)  # the blocker is now being scored
        gone = asyncio.ensure_future(batcher.submit(model, ["gone"] * 7, ["away"] * 7))
        stays = asyncio.ensure_future(batcher.submit(model, ["stay"], ["here"]))
        await asyncio.sleep(0.02)
        gone.cancel()
        await blocker
        assert len((await stays).scores) == 1
        assert batcher._admitted_pairs == 0
        await batcher.close()

    asyncio.run(main())
    rows = sum(b for b, _ in model.backend.shapes)  # type: ignore[attr-defined]
    assert rows == 2, model.backend.shapes  # type: ignore[attr-defined]


def test_empty_request_and_metrics(bundle_v1: Path) -> None:
    model = recording_model(bundle_v1)

    async def main() -> Batcher:
        batcher = make_batcher()
        batcher.start()
        empty = await batcher.submit(model, [], [])
        assert empty.scores.shape == (0,)
        scored = await batcher.submit(model, [q for q, _ in TEXTS], [a for _, a in TEXTS])
        assert scored.truncated.tolist() == [False, False, False, True, False, True]  # max_length 128
        assert np.isfinite(scored.scores).all()
        await batcher.close()
        return batcher

    batcher = asyncio.run(main())
    registry = batcher.metrics.registry
    assert registry.get_sample_value("rlhf_scored_pairs_total") == len(TEXTS)
    assert registry.get_sample_value("rlhf_truncated_pairs_total") == 2
    assert registry.get_sample_value("rlhf_queue_depth") == 0
    assert registry.get_sample_value("rlhf_batch_pairs_count") >= 2
    assert registry.get_sample_value("rlhf_score_count") == len(TEXTS)
