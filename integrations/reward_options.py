"""What an adapter's reward can be besides the served score: an uncertainty penalty, and a guard that the
served score is the length-disentangled one. Written once here; every adapter calls it.

    options = RewardOptions.resolve(normalized=False, uncertainty_penalty=0.5)   # None: from the env
    result, model = score_as_served(client, build)  # integrations.served_format: and the model that scored
    rewards = options.rewards(result, model)        # score - lambda * uncertainty [n]; NaN where not scored

**Uncertainty penalty** (Coste et al. 2023, as `rlhf train-policy --uncertainty-penalty`): the reward is
``score - lambda * uncertainty``, with the per-item uncertainty the service returns (the spread of the
bundle's ensemble of quality heads, `rlhf train-rm --quality-heads N`), so answers the ensemble disagrees
on earn less and the policy is not pulled towards where the reward model is guessing. ``lambda`` is in the
reward's own units: the raw uncertainty with the raw score, uncertainty / train std with the normalised
one; since ``(s - lambda*u - mean) / std = z - lambda * u / std``, one lambda ranks answers identically
either way. The train std comes from ``/v1/models``, fetched once per model version. A penalty asked of
a bundle without an ensemble raises `RewardSetupError` at the first call: penalising nothing would
silently train the plain objective. The rule itself is `service.uncertainty_penalty`, which the
service's trainer routes apply for ``?uncertainty_penalty=lambda`` too (for trainers that post to a route
and cannot post-process its reward).

**Length-disentangled score**: not computed here; the service serves it. A bundle trained with
`rlhf train-rm --length-head` serves its quality head (the length head is a diagnostic), and a bundle
with a length correction in its manifest (`rlhf export --length-correction`, or `rlhf correct-length
BUNDLE` for any bundle, imported ones included) serves the score minus its length trend, unless the
service runs with `--no-length-correction`. ``require_length_disentangled`` makes the adapter check,
once per model version, that ``/v1/models`` says the served score is one of those, and raise
`RewardSetupError` otherwise, so a run never trains on a plain score by mistake.

Adapters called without arguments read ``RLHF_UNCERTAINTY_PENALTY`` (a number >= 0) and
``RLHF_LENGTH_DISENTANGLED`` (1/true/yes or 0/false/no), as they read the service URL (`clients`).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from integrations.convert import InputFormat
from service.client import RewardUnavailable, ScoreResult
from service.uncertainty_penalty import NoUncertainty, check_penalty, penalise

PENALTY_ENV = "RLHF_UNCERTAINTY_PENALTY"
LENGTH_ENV = "RLHF_LENGTH_DISENTANGLED"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class RewardSetupError(ValueError):
    """The served reward model cannot give the reward the adapter was configured for (a set-up error)."""


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` says about the model that scored: its train std, whether its score is
    length-disentangled (a length head, or a length correction the service applies), and the input it
    reads (``pair`` or ``chat``: `integrations.served_format`)."""

    name: str
    version: str
    score_std: float
    length_head: bool
    length_correction_applied: bool
    input_format: InputFormat = "pair"  # a service from before chat bundles does not say: pair

    @property
    def length_disentangled(self) -> bool:
        return self.length_head or self.length_correction_applied

    @classmethod
    def from_models_response(cls, body: Mapping[str, Any]) -> ServedModel:
        """Parse the service's ``{"data": [{"name", "version", "score", "heads", "length_correction",
        "input_format"}]}``."""
        try:
            entry = body["data"][0]
            heads = entry.get("heads") or {}
            correction = entry.get("length_correction") or {}
            std = float(entry["score"]["std"])
            if not (math.isfinite(std) and std > 0):
                raise ValueError(f"score std {std}")
            input_format = entry.get("input_format") or "pair"
            if input_format not in ("pair", "chat"):
                raise ValueError(f"input_format {input_format!r}")
            return cls(
                str(entry["name"]),
                str(entry["version"]),
                std,
                bool(heads.get("length", False)),
                bool(correction.get("applied", False)),
                "chat" if input_format == "chat" else "pair",
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise RewardUnavailable(
                f"/v1/models answered without a usable model entry ({exc}): {body!r}"
            ) from exc


@dataclass(frozen=True)
class RewardOptions:
    """Which number an adapter returns as the reward."""

    normalized: bool = False  # (score - train mean) / train std instead of the raw score
    uncertainty_penalty: float = 0.0  # lambda of score - lambda * uncertainty; 0 = off
    require_length_disentangled: bool = False  # raise unless the served score is length-disentangled

    def __post_init__(self) -> None:
        check_penalty(self.uncertainty_penalty)

    @classmethod
    def resolve(
        cls,
        normalized: bool = False,
        uncertainty_penalty: float | None = None,
        require_length_disentangled: bool | None = None,
    ) -> RewardOptions:
        """The given values; None falls back to ``RLHF_UNCERTAINTY_PENALTY`` / ``RLHF_LENGTH_DISENTANGLED``."""
        if uncertainty_penalty is None:
            uncertainty_penalty = _env_penalty()
        if require_length_disentangled is None:
            require_length_disentangled = _env_flag(LENGTH_ENV)
        return cls(bool(normalized), float(uncertainty_penalty), bool(require_length_disentangled))

    @property
    def needs_model(self) -> bool:
        """Whether `rewards` needs the served model's `ServedModel` (from `served_model`)."""
        return self.require_length_disentangled or (self.uncertainty_penalty > 0 and self.normalized)

    def rewards(self, result: ScoreResult, model: ServedModel | None = None) -> np.ndarray:
        """The reward [n] float64 of each scored item; NaN where the service could not score it (never 0).

        ``model`` is required when `needs_model`; None there (the service changed model between the
        scores and the lookup) makes every reward NaN: a reward that cannot be computed consistently
        is not made up."""
        values = np.asarray(result.normalized if self.normalized else result.scores, dtype=np.float64)
        if self.needs_model and model is None:
            return np.full(len(values), np.nan)
        if self.require_length_disentangled and model is not None and not model.length_disentangled:
            raise RewardSetupError(
                f"the served reward model {model.name} {model.version} scores with neither a length head nor "
                "an applied length correction; serve a bundle trained with `rlhf train-rm --length-head`, or "
                "one corrected with `rlhf correct-length BUNDLE` (service without --no-length-correction)"
            )
        unit_std = None
        if self.normalized and self.uncertainty_penalty > 0:
            assert model is not None  # needs_model
            unit_std = model.score_std  # the penalty in the reward's own units (service.uncertainty_penalty)
        try:
            return penalise(values, result.uncertainty, self.uncertainty_penalty, unit_std)
        except NoUncertainty as exc:
            raise RewardSetupError(
                f"an uncertainty penalty ({self.uncertainty_penalty}) needs a per-item uncertainty, but the "
                f"served reward model {result.model_name} {result.model_version} returns none (a single "
                "quality head); serve a bundle trained with `rlhf train-rm --quality-heads N` (N > 1), or "
                "drop the penalty"
            ) from exc


def finite(values: np.ndarray, result: ScoreResult) -> list[float]:
    """``values`` as floats, for an adapter whose trainer has no "no reward" value: any NaN raises
    `RewardUnavailable` (as the client's ``raise_on_failure``), never a made-up number."""
    missing = int((~np.isfinite(values)).sum())
    if missing:
        why = "; ".join(result.errors) or "the service changed its model while the reward was computed"
        raise RewardUnavailable(f"{missing} of {len(values)} rewards could not be computed: {why}")
    return [float(v) for v in values]


# ---- the served model, looked up once per client and model version ------------------------------------
class _Models(Protocol):
    def models(self) -> dict[str, Any]: ...


class _AsyncModels(Protocol):
    def models(self) -> Awaitable[dict[str, Any]]: ...


LOOKUPS = 2  # once more in case a reload finished between the scores and the first lookup
# per client, then per (name, version): one bundle may be served with and without its length correction
_known: weakref.WeakKeyDictionary[Any, dict[tuple[str | None, str], ServedModel]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def served_model(client: _Models, result: ScoreResult) -> ServedModel | None:
    """The `ServedModel` that scored ``result`` (blocking client); None when nothing was scored, or the
    service already serves another model (asked twice)."""
    known = _cached(client, result)
    if known is not None or result.model_version is None:
        return known
    for _ in range(LOOKUPS):
        found = remember_models_body(client, client.models())
        if _matches(found, result):
            return found
    return None


async def served_model_async(client: _AsyncModels, result: ScoreResult) -> ServedModel | None:
    """As `served_model`, with an asyncio client."""
    known = _cached(client, result)
    if known is not None or result.model_version is None:
        return known
    for _ in range(LOOKUPS):
        found = remember_models_body(client, await client.models())
        if _matches(found, result):
            return found
    return None


def _cached(client: object, result: ScoreResult) -> ServedModel | None:
    with _lock:
        return _known.get(client, {}).get((result.model_name, result.model_version or ""))


def remember_models_body(client: object, body: dict[str, Any]) -> ServedModel:
    """The `ServedModel` of a ``/v1/models`` body ``client`` fetched, cached for `served_model`."""
    model = ServedModel.from_models_response(body)
    with _lock:
        _known.setdefault(client, {})[(model.name, model.version)] = model
    return model


def _matches(model: ServedModel, result: ScoreResult) -> bool:
    return model.version == result.model_version and result.model_name in (None, model.name)


def _env_penalty() -> float:
    text = os.environ.get(PENALTY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{PENALTY_ENV}={text!r}: expected a number >= 0")
    return value


def _env_flag(name: str) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"{name}={text!r}: expected one of {', '.join(_TRUE)} or {', '.join(_FALSE[1:])}")
    return text in _TRUE
