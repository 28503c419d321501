"""Distinct pairs to send, and the scores each gets when scored ALONE (batch of one, in-process
onnxruntime on the same bundle and precision the server picks): the yardstick for "every accepted
request gets exactly its own scores, in order", whatever it was batched with on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.bundle import load_bundle
from service.encoding import pad_batch
from service.onnx_scoring import make_session, run_scores

TOLERANCE = 1e-5  # float32 graph; batch-independent by construction, so only rounding may differ

TOPICS = [
    "bread",
    "tides",
    "taxes",
    "knots",
    "bees",
    "rust",
    "chess",
    "tea",
    "glaciers",
    "jazz",
    "maps",
    "ink",
]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct pairs of varied lengths (so sub-batches pad and sort), each with a distinct score."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        words = " ".join(rng.choice(TOPICS, size=int(rng.integers(1, 40))))
        pairs.append((f"Human: question {i} about {topic}? Assistant:", f" {words} ({i})"))
    return pairs


def scores_alone(bundle_dir: Path, pairs: Sequence[tuple[str, str]], precision: str = "auto") -> np.ndarray:
    bundle = load_bundle(bundle_dir)
    chosen = bundle.default_precision() if precision == "auto" else precision
    session = make_session(bundle.model_path(chosen), threads=1)  # type: ignore[arg-type]
    encoder = bundle.encoder()
    names = bundle.manifest.input_names
    return np.array(
        [
            run_scores(session, names, pad_batch(encoder.encode([q], [a]), encoder.pad_token_id))[0]
            for q, a in pairs
        ]
    )


def payload(pairs: Sequence[tuple[str, str]], idx: Sequence[int]) -> dict[str, list[dict[str, str]]]:
    return {"pairs": [{"question": pairs[i][0], "answer": pairs[i][1]} for i in idx]}
