"""HTTP routes. They validate, check limits, and await the batcher; they never touch the model.

Here: our own API (`/score` and `/score/groups`, which take pairs and conversations alike:
docs/api.md; probes, metrics, models, reload); the routes in the trainers' own protocols (OpenRLHF,
veRL/vLLM, SGLang, slime) are written in service/trainers.py. :func:`register` adds them all to the
app's one router, so every path the app serves is listed in one place. Every scoring response names
the model that produced it (body `model` and X-Model-* headers), so a trainer notices a reload
between two calls.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from service import trainers
from service.auth import require_admin_key, require_api_key
from service.batcher import Scored
from service.conversation import Message
from service.dependencies import StateDep, state_of
from service.errors import NotReady
from service.items import Item, PairItem
from service.metrics import CONTENT_TYPE
from service.model import LoadedModel
from service.schemas import (
    ChatMessage,
    ErrorResponse,
    Group,
    GroupResult,
    GroupsRequest,
    GroupsResponse,
    Pair,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.state import PrecisionChoice
from service.submit import ERRORS, conversation_item, model_headers, model_ref, score_items


def uncertainty_lists(
    scored: Scored, rows: slice = slice(None)
) -> tuple[list[float] | None, list[float] | None]:
    """(uncertainty, uncertainty / train std) of `rows` as lists, or (None, None) without an ensemble."""
    if scored.uncertainty is None:
        return None, None
    part = scored.uncertainty[rows]
    return part.tolist(), scored.model.normalize_uncertainty(part).tolist()


class _Items:
    """A body's items, where each sits in the body (for a 422), and its strings (for the limits)."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.where: list[str] = []
        self.fields: list[tuple[str, str]] = []

    def pair(self, question: str, answer: str, where: str) -> None:
        self.items.append(PairItem(question, answer))
        self.where.append(where)

    def conversation(self, messages: list[Message], where: str) -> None:
        self.items.append(conversation_item(messages, where))
        self.where.append(where)

    def messages(self, messages: list[ChatMessage], where: str) -> list[Message]:
        self.fields += [(f"{where}[{j}].content", m.content) for j, m in enumerate(messages)]
        return [Message(m.role, m.content) for m in messages]


async def score(body: ScoreRequest, request: Request, response: Response) -> ScoreResponse:
    """Score (question, answer) pairs and conversations (`{"messages": [...]}`); same order as the input."""
    batch = _Items()
    for i, entry in enumerate(body.pairs):
        if isinstance(entry, Pair):
            at = f"pairs[{i}]"
            batch.fields += [(f"{at}.question", entry.question), (f"{at}.answer", entry.answer)]
            batch.pair(entry.question, entry.answer, at)
        else:
            at = f"pairs[{i}].messages"
            batch.conversation(batch.messages(entry.messages, at), at)
    scored = await score_items(request, state_of(request), batch.items, batch.where, batch.fields)
    model_headers(response, scored)
    uncertainty, uncertainty_normalized = uncertainty_lists(scored)
    return ScoreResponse(
        scores=scored.scores.tolist(),
        normalized=scored.model.normalize(scored.scores).tolist(),
        truncated=scored.truncated.tolist(),
        uncertainty=uncertainty,
        uncertainty_normalized=uncertainty_normalized,
        model=model_ref(scored),
    )


def group_baselines(scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(group mean, leave-one-out baselines): baseline_i = mean of the other scores; n = 1 -> the score."""
    n = len(scores)
    total = float(scores.sum())
    if n == 1:
        return total, scores.copy()
    return total / n, (total - scores) / (n - 1)


async def score_groups(body: GroupsRequest, request: Request, response: Response) -> GroupsResponse:
    """Several answers per question (or per conversation), plus within-group baselines and advantages."""
    sizes = [len(g.answers) for g in body.groups]
    batch = _Items()
    for i, group in enumerate(body.groups):
        answers = [(f"groups[{i}].answers[{j}]", answer) for j, answer in enumerate(group.answers)]
        if isinstance(group, Group):
            batch.fields += [(f"groups[{i}].question", group.question), *answers]
            for at, answer in answers:
                batch.pair(group.question, answer, at)
        else:
            history = batch.messages(group.messages, f"groups[{i}].messages")
            batch.fields += answers
            for at, answer in answers:
                batch.conversation([*history, Message("assistant", answer)], at)
    scored = await score_items(request, state_of(request), batch.items, batch.where, batch.fields)
    model_headers(response, scored)
    normalized = scored.model.normalize(scored.scores)
    results = []
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        part = scored.scores[rows]
        mean, loo = group_baselines(part)
        uncertainty, uncertainty_normalized = uncertainty_lists(scored, rows)
        results.append(
            GroupResult(
                scores=part.tolist(),
                normalized=normalized[rows].tolist(),
                truncated=scored.truncated[rows].tolist(),
                uncertainty=uncertainty,
                uncertainty_normalized=uncertainty_normalized,
                mean=mean,
                leave_one_out_baselines=loo.tolist(),
                advantages=(part - loo).tolist(),
            )
        )
        start += size
    return GroupsResponse(groups=results, model=model_ref(scored))


async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


async def readyz(state: StateDep) -> dict[str, object]:
    """Readiness: a bundle is loaded and its canary forward pass succeeded; 503 while draining."""
    model = state.current_model()
    return {"status": "ready", "model": {"name": model.name, "version": model.version}}


async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def model_summary(model: LoadedModel) -> dict[str, object]:
    """The manifest summary, with what a caller needs to send the right input: the format the model
    reads (`pair` or `chat`) and the sha256 of its chat template (null for a pair bundle), so a trainer
    can check the policy's template is the reward model's own."""
    manifest = model.bundle.manifest
    return {
        **model.summary(),
        "input_format": manifest.input_format,
        "chat_template_sha256": manifest.chat_template_sha256,
    }


async def models(state: StateDep) -> dict[str, object]:
    """The loaded bundle's manifest summary (OpenAI-style list with one entry)."""
    model = state.model
    if model is None:
        raise NotReady(f"no model is loaded yet: {state.load_error or 'loading'}")
    return {"object": "list", "data": [model_summary(model)]}


async def reload(body: ReloadRequest, state: StateDep) -> JSONResponse:
    """Load another bundle (under RLHF_BUNDLE_ROOT); on any failure the old model keeps serving."""
    precision = cast(PrecisionChoice | None, body.precision)
    new, previous = await state.reload(body.bundle, precision)
    content = ReloadResponse(model=model_summary(new), previous=model_summary(previous) if previous else None)
    headers = {"X-Model-Name": new.name, "X-Model-Version": new.version}
    return JSONResponse(content.model_dump(mode="json"), headers=headers)


def register(router: APIRouter) -> None:
    """Add every route of the service to `router`: `create_app` passes the app's own router. Not
    `app.include_router`: FastAPI (>= 0.16x) then matches every request through the included router's
    wrapper, a cost paid per request that single-pair load (RL trainers) pays per pair."""
    scoring = [Depends(require_api_key)]
    router.add_api_route(
        "/score", score, methods=["POST"], response_model=ScoreResponse, responses=ERRORS, dependencies=scoring
    )  # fmt: skip
    router.add_api_route(
        "/score/groups", score_groups, methods=["POST"], response_model=GroupsResponse, responses=ERRORS,
        dependencies=scoring,
    )  # fmt: skip
    router.add_api_route("/healthz", healthz, methods=["GET"])
    router.add_api_route("/readyz", readyz, methods=["GET"], responses={503: {"model": ErrorResponse}})
    # response_class documents text/plain in the schema
    router.add_api_route("/metrics", metrics, methods=["GET"], response_class=PlainTextResponse)
    router.add_api_route("/v1/models", models, methods=["GET"], responses=ERRORS, dependencies=scoring)
    router.add_api_route(
        "/admin/reload", reload, methods=["POST"], response_model=ReloadResponse, responses=ERRORS,
        dependencies=[Depends(require_admin_key)],
    )  # fmt: skip
    trainers.register(router)  # the trainers' protocols: service/trainers.py


router = APIRouter()  # every route, for what lists them without building an app (deploy's checks)
register(router)
