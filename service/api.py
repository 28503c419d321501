"""HTTP routes. They validate, check limits, and await the batcher; they never touch the model.

Every scoring response names the model that produced it (body `model` and X-Model-* headers), so a
trainer notices a reload between two calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from service.auth import require_admin_key, require_api_key
from service.batcher import Scored
from service.dependencies import StateDep
from service.errors import NotReady, ValidationFailed
from service.limits import check_count, check_fields
from service.metrics import CONTENT_TYPE
from service.schemas import (
    ErrorResponse,
    GetRewardRequest,
    GetRewardResponse,
    GroupResult,
    GroupsRequest,
    GroupsResponse,
    ModelRef,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.state import PrecisionChoice, ServiceState

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; recorded in metrics only
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (401, "missing or wrong bearer token"),
        (413, "too many bytes, pairs, or characters"),
        (422, "malformed input"),
        (429, "queue full; see Retry-After"),
        (503, "not ready or draining"),
    ]
}

router = APIRouter()


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing is sent back."""


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def score_pairs(
    request: Request, state: ServiceState, questions: Sequence[str], answers: Sequence[str]
) -> Scored:
    """Submit to the batcher; if the client disconnects first, cancel so the batcher skips the pairs."""
    check_count(len(questions), state.settings.max_pairs_per_request, "pairs")
    model = state.current_model()
    work = asyncio.ensure_future(state.batcher.submit(model, questions, answers))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientGone
    return work.result()


def _model_headers(response: Response, scored: Scored) -> None:
    response.headers["X-Model-Name"] = scored.model.name
    response.headers["X-Model-Version"] = scored.model.version


def _ref(scored: Scored) -> ModelRef:
    return ModelRef(name=scored.model.name, version=scored.model.version)


@router.post(
    "/score", response_model=ScoreResponse, responses=ERRORS, dependencies=[Depends(require_api_key)]
)
async def score(body: ScoreRequest, request: Request, response: Response, state: StateDep) -> ScoreResponse:
    """Score (question, answer) pairs; same order as the input."""
    check_fields(
        (
            (f"pairs[{i}].{k}", getattr(p, k))
            for i, p in enumerate(body.pairs)
            for k in ("question", "answer")
        ),
        state.settings.max_field_chars,
    )
    questions, answers = [p.question for p in body.pairs], [p.answer for p in body.pairs]
    scored = await score_pairs(request, state, questions, answers)
    _model_headers(response, scored)
    return ScoreResponse(
        scores=scored.scores.tolist(),
        normalized=scored.model.normalize(scored.scores).tolist(),
        truncated=scored.truncated.tolist(),
        model=_ref(scored),
    )


def group_baselines(scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(group mean, leave-one-out baselines): baseline_i = mean of the other scores; n = 1 -> the score."""
    n = len(scores)
    total = float(scores.sum())
    if n == 1:
        return total, scores.copy()
    return total / n, (total - scores) / (n - 1)


@router.post(
    "/score/groups", response_model=GroupsResponse, responses=ERRORS, dependencies=[Depends(require_api_key)]
)
async def score_groups(
    body: GroupsRequest, request: Request, response: Response, state: StateDep
) -> GroupsResponse:
    """Several answers per question, plus within-group baselines and advantages for RL."""
    sizes = [len(g.answers) for g in body.groups]
    check_fields(
        [(f"groups[{i}].question", g.question) for i, g in enumerate(body.groups)]
        + [
            (f"groups[{i}].answers[{j}]", a)
            for i, g in enumerate(body.groups)
            for j, a in enumerate(g.answers)
        ],
        state.settings.max_field_chars,
    )
    questions = [g.question for g in body.groups for _ in g.answers]
    answers = [a for g in body.groups for a in g.answers]
    scored = await score_pairs(request, state, questions, answers)
    _model_headers(response, scored)
    normalized = scored.model.normalize(scored.scores)
    results = []
    start = 0
    for size in sizes:
        part = scored.scores[start : start + size]
        mean, loo = group_baselines(part)
        results.append(
            GroupResult(
                scores=part.tolist(),
                normalized=normalized[start : start + size].tolist(),
                truncated=scored.truncated[start : start + size].tolist(),
                mean=mean,
                leave_one_out_baselines=loo.tolist(),
                advantages=(part - loo).tolist(),
            )
        )
        start += size
    return GroupsResponse(groups=results, model=_ref(scored))


def split_query(query: str, prompt: str) -> tuple[str, str]:
    """OpenRLHF sends prompt + response; the answer is what follows the prompt."""
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt) :]
    return prompt, query


@router.post(
    "/get_reward", response_model=GetRewardResponse, responses=ERRORS, dependencies=[Depends(require_api_key)]
)
async def get_reward(
    body: GetRewardRequest, request: Request, response: Response, state: StateDep
) -> GetRewardResponse:
    """Drop-in for OpenRLHF's remote reward model API."""
    prompts = body.prompts if body.prompts is not None else [""] * len(body.query)
    if len(prompts) != len(body.query):
        raise ValidationFailed(
            f"{len(body.query)} queries but {len(prompts)} prompts: send one prompt per query"
        )
    check_fields(
        [(f"query[{i}]", q) for i, q in enumerate(body.query)]
        + [(f"prompts[{i}]", p) for i, p in enumerate(prompts)],
        state.settings.max_field_chars,
    )
    split = [split_query(q, p) for q, p in zip(body.query, prompts, strict=True)]
    scored = await score_pairs(request, state, [q for q, _ in split], [a for _, a in split])
    _model_headers(response, scored)
    raw = scored.scores.tolist()
    return GetRewardResponse(
        rewards=raw,
        scores=raw,
        normalized=scored.model.normalize(scored.scores).tolist(),
        truncated=scored.truncated.tolist(),
        model=_ref(scored),
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: StateDep) -> dict[str, object]:
    """Readiness: a bundle is loaded and its canary forward pass succeeded; 503 while draining."""
    model = state.current_model()
    return {"status": "ready", "model": {"name": model.name, "version": model.version}}


@router.get("/metrics", response_class=PlainTextResponse)  # documents text/plain in the schema
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models", responses=ERRORS, dependencies=[Depends(require_api_key)])
async def models(state: StateDep) -> dict[str, object]:
    """The loaded bundle's manifest summary (OpenAI-style list with one entry)."""
    model = state.model
    if model is None:
        raise NotReady(f"no model is loaded yet: {state.load_error or 'loading'}")
    return {"object": "list", "data": [model.summary()]}


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses=ERRORS,
    dependencies=[Depends(require_admin_key)],
)
async def reload(body: ReloadRequest, state: StateDep) -> JSONResponse:
    """Load another bundle (under RLHF_BUNDLE_ROOT); on any failure the old model keeps serving."""
    precision = cast(PrecisionChoice | None, body.precision)
    new, previous = await state.reload(body.bundle, precision)
    content = ReloadResponse(model=new.summary(), previous=previous.summary() if previous else None)
    headers = {"X-Model-Name": new.name, "X-Model-Version": new.version}
    return JSONResponse(content.model_dump(mode="json"), headers=headers)
