"""The gold reward: a reward model the policy never optimised against, scored in this process.

    gold = GoldScorer.load("bundles/gold", threads=1)
    raw = gold.score(questions, answers)          # float64 [n], exactly what `rlhf serve` would return
    raw = gold.score_items([(q, a), {"messages": [...]}])   # /score's items: pairs and conversations
    gold.normalize(raw)                           # in the gold's own train-score std

Why: the proxy reward is what the policy climbs, so its rise says little about whether the answers
got better. Gao et al. (2022) measure over-optimisation against a second, "gold" reward model: as the
policy moves away from its start, the proxy keeps rising while the gold flattens and then falls. A
gold only sees that when it differs from the proxy where the hacking happens: a gold trained on the
same pairs from the same base with another seed shares the proxy's length bias and rises with it;
a length-corrected one, or one from another base or data, does not (DESIGN.md, "A gold reference
must differ where hacking happens"). Its own score-length correlation is reported beside its gain.

Scored with the service's own code, not a second implementation: `service.model.load_model`
verifies the bundle and runs its canary, the bundle's encoder encodes through `service.items` as the
service's batcher does (the same truncation; a conversation rendered by a `chat` bundle's template,
read as hh turns by a `pair` bundle), and `LoadedModel.served` turns the graph outputs into the served score (the manifest's length
correction included). Only the batching is local: pairs are length-sorted into batches of
``batch_size``, and a score does not depend on its batch-mates (the canary checks it). torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.client import ScoreItem
from service.conversation import ConversationError, validate_conversation
from service.encoding import EncodedPair, pad_batch
from service.errors import InferenceFailed
from service.items import Item, ItemRefused, PairItem, encode_items
from service.model import LoadedModel, ModelLoadError, load_model
from service.onnx_scoring import length_sorted_batches
from training.policy.errors import GoldError
from training.policy.scoring import rm_item

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
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        return self._score([PairItem(q, a) for q, a in zip(questions, answers, strict=True)])

    def score_items(self, items: Sequence[ScoreItem]) -> np.ndarray:
        """Served scores [n] float64 of items as `service.client` sends them to ``POST /score``: pairs
        and ``{"messages": [...]}`` conversations, in input order. A conversation the gold cannot read
        (broken rules, or refused by its chat template) is a GoldError naming the item."""
        return self._score([_service_item(i, item) for i, item in enumerate(items)])

    def _score(self, items: Sequence[Item]) -> np.ndarray:
        try:
            encoded = encode_items(self.model.encoder, items)
        except ItemRefused as exc:
            raise GoldError(f"the gold reward model cannot read item {exc.index}: {exc.reason}") from exc
        except ConversationError as exc:
            raise GoldError(f"the gold reward model's encoder refused the items: {exc}") from exc
        return self._run(encoded)

    def _run(self, encoded: Sequence[EncodedPair]) -> np.ndarray:
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


def _service_item(index: int, item: ScoreItem) -> Item:
    """A client item as the service's ``/score`` reads it: a pair, or a checked conversation."""
    if not isinstance(item, Mapping):
        question, answer = item
        return PairItem(question, answer)
    try:
        return validate_conversation(item.get("messages"))
    except ConversationError as exc:
        raise GoldError(f"the gold reward model cannot read item {index}: {exc}") from exc


def gold_scores(gold: GoldScorer | None, groups: Sequence[Group]) -> list[np.ndarray]:
    """The gold's raw scores of every group's answers, one array per group (NaN without a gold).

    Asked exactly like the proxy (`training.policy.scoring.rm_item`), in one call for all groups."""
    sizes = [len(g.texts) for g in groups]
    if gold is None:
        return [np.full(n, np.nan) for n in sizes]
    flat = gold.score_items([rm_item(g.prompt, text) for g in groups for text in g.texts])
    return list(np.split(flat, np.cumsum(sizes)[:-1])) if sizes else []
