"""Routes in the protocols RL trainers already speak, all on the one batcher (no second model path).

    POST /get_reward      OpenRLHF  --reward.remote_url http://host:8000/get_reward    docs/openrlhf.md
    POST /classify        veRL's reward loop, as to a vLLM server (reads data[i].probs[-1])  docs/verl.md
    POST /v1/embeddings   the same for SGLang (reads data[i].embedding[-1])          docs/verl.md
    POST /slime/reward    slime     --rm-type remote_rm --rm-url http://host:8000/slime/reward  docs/slime.md

Each route turns its body into (question, answer) pairs (rendered text is split by
`service.rendered.split_rendered`), awaits `service.submit.score_pairs`, and answers in the trainer's
shape; a pair gets exactly the score `POST /score` gives it. Errors are the service's (`ErrorResponse`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_api_key
from service.batcher import Scored
from service.dependencies import StateDep
from service.errors import ValidationFailed
from service.rendered import split_rendered
from service.submit import ERRORS, model_headers, score_pairs
from service.trainer_schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    GetRewardRequest,
    GetRewardResponse,
    RenderedTextsRequest,
    SlimeRewardRequest,
)


def register(router: APIRouter) -> None:
    """Add these routes to `router`, the app's one router (service/api.py), so every path the app
    serves is listed in one place (route labels, the security enumeration, the OpenAPI schema)."""

    def post(path: str, endpoint: Callable[..., Awaitable[object]], response_model: type) -> None:
        router.add_api_route(
            path, endpoint, methods=["POST"], response_model=response_model, responses=ERRORS,
            dependencies=[Depends(require_api_key)],
        )  # fmt: skip

    post("/get_reward", get_reward, GetRewardResponse)
    post("/classify", classify, ClassifyResponse)
    post("/v1/embeddings", embeddings, EmbeddingsResponse)
    post("/slime/reward", slime_reward, float)


async def get_reward(
    body: GetRewardRequest, request: Request, response: Response, state: StateDep
) -> GetRewardResponse:
    """OpenRLHF's remote reward model: rewards (scores), scores in [0, 1], extra_logs."""
    prompts = body.prompts if body.prompts is not None else [None] * len(body.query)
    if len(prompts) != len(body.query):
        raise ValidationFailed(
            f"{len(body.query)} queries but {len(prompts)} prompts: send one prompt per query"
        )
    pairs = [split_rendered(q, p) for q, p in zip(body.query, prompts, strict=True)]
    fields = [(f"query[{i}]", q) for i, q in enumerate(body.query)]
    fields += [(f"prompts[{i}]", p) for i, p in enumerate(body.prompts or [])]
    scored = await score_pairs(request, state, [q for q, _ in pairs], [a for _, a in pairs], fields)
    model_headers(response, scored)
    return GetRewardResponse.of(scored)


async def _score_texts(
    body: RenderedTextsRequest, request: Request, response: Response, state: StateDep
) -> Scored:
    """Score each rendered text of a vLLM/SGLang-style body as the (question, answer) it splits into."""
    pairs = [split_rendered(text) for text in body.texts]
    fields = [(f"input[{i}]", text) for i, text in enumerate(body.texts)]
    scored = await score_pairs(request, state, [q for q, _ in pairs], [a for _, a in pairs], fields)
    model_headers(response, scored)
    return scored


async def classify(
    body: ClassifyRequest, request: Request, response: Response, state: StateDep
) -> ClassifyResponse:
    """vLLM-compatible classification: one class per text, probs[-1] is the reward (veRL)."""
    return ClassifyResponse.of(await _score_texts(body, request, response, state), body.apply_activation)


async def embeddings(
    body: EmbeddingsRequest, request: Request, response: Response, state: StateDep
) -> EmbeddingsResponse:
    """SGLang-compatible reward: embedding[-1] is the raw score (veRL with an SGLang reward model)."""
    return EmbeddingsResponse.of(await _score_texts(body, request, response, state))


async def slime_reward(
    body: SlimeRewardRequest, request: Request, response: Response, state: StateDep
) -> float:
    """slime's remote reward model: one sample in, its score out as one JSON number."""
    fields = [("prompt", body.prompt), ("response", body.response)]
    scored = await score_pairs(request, state, [body.prompt], [body.response], fields)
    model_headers(response, scored)
    return float(scored.scores[0])
