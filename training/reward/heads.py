"""The reward model's heads: which classifier column is what, what the graph outputs, the bootstrap.

    layout = HeadLayout(quality_heads=5, length_head=True)   # num_labels 6: columns 0-4 quality, 5 length
    layout.output_names                                       # ("score", "uncertainty", "length_score")
    weights = bootstrap_weights(n_pairs=1800, heads=5, seed=0)  # [1800, 5] Poisson(1) pair weights
    outputs = score_outputs(session, input_names, encoded, pad_token_id)  # {"score": [n], ...}

Why extra labels of one classifier rather than a custom module: `AutoModelForSequenceClassification
(num_labels=K)` already is "K linear heads on the pooled output", and it saves, loads and exports to
ONNX without custom code. The layout is stored in the model's config.json (``reward_heads``), so a
saved model knows its own columns; a model without it is today's single scalar head.

Columns 0..M-1 are the **quality heads**; the served ``score`` is their mean. With a **length head**
(ODIN, Chen et al. 2024) the last column is trained to absorb the answer-length signal (see
losses.py) and is exported as ``length_score``, a diagnostic the service may show, never the reward.

**Ensemble of quality heads (M > 1).** Each head sees its own bootstrap of the pairs (a Poisson(1)
weight per pair and head: resampling with replacement, streamed) and starts from its own random row
of the classifier, so heads disagree where the data is thin; ``uncertainty`` is their standard
deviation (population, ddof 0), computed inside the graph, so one forward pass yields both. What
the literature says about this choice (Eisenstein et al. 2023, "Helping or Herding? Reward Model
Ensembles Mitigate but do not Eliminate Reward Hacking"): ensemble members that share a pretrained
backbone and seed are much less diverse than members pretrained from different seeds, and their
spread underestimates the true uncertainty; pretrain-diverse ensembles are the robust kind but cost
M full forward passes (and M fine-tunings). Heads on one shared, jointly fine-tuned backbone are
the cheapest and weakest form: one forward pass, disagreement only from the last linear layer and
the bootstrap. So the uncertainty here is a cheap signal whose informativeness must be measured
(`rlhf eval` reports how well it ranks the pairs the model gets wrong, as an AUROC), not assumed.

torch-free (numpy): `rlhf eval` reads the outputs through here and must not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.encoding import EncodedPair, pad_batch
from service.onnx_scoring import (
    LENGTH_OUTPUT,
    SCORE_OUTPUT,
    UNCERTAINTY_OUTPUT,
    length_sorted_batches,
    run_outputs,
)

CONFIG_KEY = "reward_heads"  # attribute of the transformers config (saved in config.json)


class HeadLayoutError(ValueError):
    """A model's classifier columns cannot be read as reward heads."""


@dataclass(frozen=True)
class HeadLayout:
    """Which classifier columns are quality heads and whether the last one is a length head."""

    quality_heads: int = 1
    length_head: bool = False

    def __post_init__(self) -> None:
        if self.quality_heads < 1:
            raise HeadLayoutError(f"quality_heads must be at least 1, got {self.quality_heads}")

    @property
    def num_labels(self) -> int:
        return self.quality_heads + int(self.length_head)

    @property
    def is_plain(self) -> bool:
        """One quality head and nothing else: today's model, exported exactly as before."""
        return self.num_labels == 1

    @property
    def length_column(self) -> int | None:
        return self.quality_heads if self.length_head else None

    @property
    def output_names(self) -> tuple[str, ...]:
        """Graph outputs in order: score, then uncertainty (M > 1), then length_score (length head)."""
        names = [SCORE_OUTPUT]
        if self.quality_heads > 1:
            names.append(UNCERTAINTY_OUTPUT)
        if self.length_head:
            names.append(LENGTH_OUTPUT)
        return tuple(names)

    def to_dict(self) -> dict[str, Any]:
        return {"quality_heads": self.quality_heads, "length_head": self.length_head}

    def manifest_entry(self) -> dict[str, Any]:
        """The bundle manifest's ``heads`` (service.bundle.HeadsInfo)."""
        return {"quality": self.quality_heads, "length": self.length_head}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HeadLayout:
        try:
            return cls(int(values["quality_heads"]), bool(values["length_head"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadLayoutError(f"cannot read a head layout from {dict(values)!r} ({exc})") from exc

    @classmethod
    def of_config(cls, config: Any) -> HeadLayout:
        """The layout stored in a transformers config; a config without one is a single scalar head
        (a base model, whose label count means nothing yet, or a reward model saved before heads)."""
        stored = getattr(config, CONFIG_KEY, None)
        if stored is None:
            return cls()
        labels = int(getattr(config, "num_labels", 1))
        layout = cls.from_dict(stored)
        if layout.num_labels != labels:
            raise HeadLayoutError(
                f"config stores {CONFIG_KEY}={stored} ({layout.num_labels} columns) but num_labels={labels}"
            )
        return layout


def bootstrap_weights(n_pairs: int, heads: int, seed: int) -> np.ndarray:
    """Poisson(1) weight per pair and quality head [n_pairs, heads] float32; all ones for one head.

    A Poisson(1) count is how often a pair would appear in a resample with replacement of a large
    data set, so weighting the loss by it trains each head on its own bootstrap without changing
    the batches. A pure function of (n_pairs, heads, seed): a resumed run reuses the same weights.
    """
    if heads == 1:
        return np.ones((n_pairs, 1), dtype=np.float32)
    rng = np.random.default_rng([seed, 0xB007])
    return rng.poisson(1.0, size=(n_pairs, heads)).astype(np.float32)


def output_names_of(session: Any) -> list[str]:
    """The names of an onnxruntime session's outputs, in graph order."""
    return [o.name for o in session.get_outputs()]


def score_outputs(
    session: Any,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int = 32,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Every graph output (or ``names``) for encoded pairs, [n] each in input order, length-sorted runs.

    The multi-output twin of `service.onnx_scoring.score_encoded` (same batching, so the same numbers
    for ``score``)."""
    wanted = list(names) if names is not None else output_names_of(session)
    out = {name: np.empty(len(encoded), dtype=np.float64) for name in wanted}
    for idx in length_sorted_batches([len(pair) for pair in encoded], batch_size):
        values = run_outputs(session, input_names, pad_batch([encoded[i] for i in idx], pad_token_id), wanted)
        for name in wanted:
            out[name][idx] = values[name]
    return out
