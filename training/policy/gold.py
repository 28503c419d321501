"""The gold reward: a reward model the policy never optimised against, scored in this process.

    gold = GoldScorer.load("bundles/gold", threads=1)
    raw = gold.score(questions, answers)          # float64 [n], exactly what `rlhf serve` would return
    gold.normalize(raw)                           # in the gold's own train-score std

Why: the proxy reward is what the policy climbs, so its rise says little about whether the answers
got better. Gao et al. (2022) measure over-optimisation against a second, "gold" reward model: as the
policy moves away from its start, the proxy keeps rising while the gold flattens and then falls. A
gold only sees that when it differs from the proxy where the hacking happens: a gold trained on the
same pairs from the same base with another seed shares the proxy's length bias and rises with it;
a length-corrected one, or one from another base or data, does not (DESIGN.md, "A gold reference
must differ where hacking happens"). Its own score-length correlation is reported beside its gain.

Scored with the service's own code, not a second implementation: `service.model.load_model`
verifies the bundle and runs its canary, the bundle's `PairEncoder` encodes (the same truncation),
and `LoadedModel.served` turns the graph outputs into the served score (the manifest's length
correction included). Only the batching is local: pairs are length-sorted into batches of
``batch_size``, and a score does not depend on its batch-mates (the canary checks it). torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.encoding import pad_batch
from service.errors import InferenceFailed
from service.model import LoadedModel, ModelLoadError, load_model
from service.onnx_scoring import length_sorted_batches
from training.policy.errors import GoldError
from training.policy.scoring import rm_answer

if TYPE_CHECKING:
    from training.policy.rollout import Group


@dataclass(frozen=True, eq=False)
class GoldScorer:
    """One loaded gold bundle; `score` is blocking (call it off the event loop)."""

    model: LoadedModel
    batch_size: int = 32

    @classmethod
    def load(cls, path: str | Path, threads: int = 1, batch_size: int = 32) -> GoldScorer:
        """Verify and canary-check the bundle as `rlhf serve` does (its default precision)."""
        try:
            return cls(load_model(Path(path), "auto", threads), batch_size)
        except ModelLoadError as exc:
            raise GoldError(f"the gold bundle {path} cannot be used: {exc}") from exc

    @property
    def score_mean(self) -> float:
        return self.model.bundle.manifest.score.mean

    @property
    def score_std(self) -> float:
        return self.model.bundle.manifest.score.std

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Served scores [n] float64 of (question, answer) pairs, in input order."""
        encoded = self.model.encoder.encode(questions, answers)
        scores = np.empty(len(encoded), dtype=np.float64)
        pad = self.model.encoder.pad_token_id
        for idx in length_sorted_batches([len(pair) for pair in encoded], self.batch_size):
            pairs = [encoded[i] for i in idx]
            try:
                outputs = self.model.backend.run(pad_batch(pairs, pad))
            except InferenceFailed as exc:
                raise GoldError(f"the gold reward model failed: {exc.message}") from exc
            tokens = np.array([pair.answer_tokens for pair in pairs], dtype=np.int64)
            scores[idx] = self.model.served(outputs, tokens).scores
        return scores

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """(score - the gold's train mean) / its train std: the unit its gain is reported in."""
        return self.model.normalize(np.asarray(scores, dtype=np.float64))

    def describe(self) -> dict[str, Any]:
        """What the run summary records of its gold (the service's /v1/models entry for it)."""
        return self.model.summary()


def gold_scores(gold: GoldScorer | None, groups: Sequence[Group]) -> list[np.ndarray]:
    """The gold's raw scores of every group's answers, one array per group (NaN without a gold).

    Asked exactly like the proxy (`training.policy.scoring.rm_answer`), in one call for all groups."""
    sizes = [len(g.texts) for g in groups]
    if gold is None:
        return [np.full(n, np.nan) for n in sizes]
    questions = [g.prompt.question for g in groups for _ in g.texts]
    answers = [rm_answer(text) for g in groups for text in g.texts]
    flat = gold.score(questions, answers)
    return list(np.split(flat, np.cumsum(sizes)[:-1])) if sizes else []
