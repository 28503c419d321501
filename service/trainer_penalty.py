"""``?uncertainty_penalty=λ`` on the trainer routes: the reward they return becomes score − λ·uncertainty.

    POST /get_reward?uncertainty_penalty=0.5     OpenRLHF: --reward.remote_url 'http://host:8000/get_reward?uncertainty_penalty=0.5'
    POST /slime/reward?uncertainty_penalty=0.5   slime:    --rm-url 'http://host:8000/slime/reward?uncertainty_penalty=0.5'
    POST /classify?uncertainty_penalty=0.5       vLLM-protocol clients (veRL) given a full URL

Why on the server: OpenRLHF's plain HTTP call, veRL's reward loop and slime's `remote_rm` use the number
the route returns as the reward and cannot post-process it; a query parameter fits in the URL flag each
of them already takes. The penalty itself is `service.uncertainty_penalty` (the rule the client-side
adapters use too): applied to the raw score, so a raw reward is ``score − λ·u`` and the [0, 1] reward of
`/classify` is the sigmoid of the penalised normalised score.

A penalty > 0 asked of a bundle without an ensemble of quality heads is a 422 (checked before scoring,
and again on the model that scored, which a reload may have swapped): a trainer that asked for the
penalised objective must not silently train the plain one. λ = 0 (the default) changes nothing.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Depends, Query, Request

from service.batcher import Scored
from service.dependencies import state_of
from service.errors import ValidationFailed
from service.model import LoadedModel
from service.uncertainty_penalty import NoUncertainty, check_penalty, penalise

PARAMETER = "uncertainty_penalty"
DESCRIPTION = (
    "λ >= 0 (finite): the returned reward is score − λ·uncertainty, the uncertainty being the spread of "
    "the bundle's ensemble of quality heads in raw score units (a bundle without one: 422 when λ > 0); "
    "the [0, 1] reward is the sigmoid of the penalised normalised score. Absent: the server's "
    "trainer_uncertainty_penalty (0 unless set: the plain score)"
)


async def uncertainty_penalty(
    request: Request,
    uncertainty_penalty: Annotated[float | None, Query(description=DESCRIPTION)] = None,
) -> float:
    """The query parameter, checked (NaN, infinite or negative is a 422 naming it); absent, the server's
    ``trainer_uncertainty_penalty`` (RLHF_TRAINER_UNCERTAINTY_PENALTY), for trainers whose URL is fixed."""
    if uncertainty_penalty is None:
        return state_of(request).settings.trainer_uncertainty_penalty
    try:
        return check_penalty(uncertainty_penalty, PARAMETER)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


PenaltyDep = Annotated[float, Depends(uncertainty_penalty)]


def _no_ensemble(model: LoadedModel, lam: float) -> ValidationFailed:
    return ValidationFailed(
        f"{PARAMETER}={lam:g} needs a per-item uncertainty, but the loaded reward model {model.name} "
        f"{model.version} has no ensemble of quality heads; serve a bundle trained with `rlhf train-rm "
        f"--quality-heads N` (N > 1), or drop {PARAMETER} from the URL"
    )


def require_uncertainty(model: LoadedModel, lam: float) -> None:
    """Refuse a penalty the model cannot give, before any scoring is spent on the request."""
    if lam > 0 and not model.has_uncertainty:
        raise _no_ensemble(model, lam)


def penalised_scores(scored: Scored, lam: float) -> np.ndarray:
    """The raw scores minus ``lam`` times their uncertainty [n] float64 (the scores as they are at λ = 0)."""
    try:
        return penalise(scored.scores, scored.uncertainty, lam)
    except NoUncertainty as exc:
        raise _no_ensemble(scored.model, lam) from exc
