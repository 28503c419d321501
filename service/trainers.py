"""Routes in the protocols RL trainers already speak, all on the one batcher (no second model path).

    POST /get_reward      OpenRLHF  --reward.remote_url http://host:8000/get_reward    docs/openrlhf.md
    POST /classify        veRL's reward loop, as to a vLLM server (reads data[i].probs[-1])  docs/verl.md
    POST /v1/embeddings   the same for SGLang (reads data[i].embedding[-1])          docs/verl.md
    POST /slime/reward    slime     --rm-type remote_rm --rm-url http://host:8000/slime/reward  docs/slime.md

Each route reads the text it is sent with `service.chat_text` (a recognised chat template → the
conversation, which the bundle renders its own way; other text → a (question, answer) pair by the
plain-text rule), so the same text becomes the same item whichever trainer sent it and whichever
adapter (`integrations.convert`) converted it; then it awaits `service.submit.score_items` and answers
in the trainer's shape. An item gets exactly the score `POST /score` gives it. Errors are the
service's (`ErrorResponse`); a templated text whose conversation breaks a rule (an unknown role, no
answer) is a 422 naming it. docs/chat-text.md says how text is read and why.

Every route takes ``?uncertainty_penalty=λ`` (service/trainer_penalty.py): the reward it returns is then
``score − λ·uncertainty``, for trainers that use the returned number as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_api_key
from service.batcher import Scored
from service.chat import ChatEncoder
from service.chat_text import Reading, is_own_rendering, read_prompt_and_response, read_rendered
from service.conversation import ConversationError
from service.dependencies import state_of
from service.encoding import Encoder
from service.errors import ValidationFailed
from service.items import Item, PairItem
from service.submit import ERRORS, conversation_item, model_headers, score_items
from service.trainer_penalty import PenaltyDep, penalised_scores, require_uncertainty
from service.trainer_schemas import (
    OWN_TEMPLATE,
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


def item_of(reading: Reading, where: str) -> Item:
    """The item a reading of rendered text is scored as; a conversation that breaks a rule is a 422."""
    if reading.messages is not None:
        return conversation_item(reading.messages, where)
    assert reading.pair is not None, "a reading holds messages or a pair"
    return PairItem(*reading.pair)


def read_as(reading: Reading, item: Item, text: str, encoder: Encoder) -> str:
    """How a text was read: OWN_TEMPLATE when the bundle's own chat template renders the conversation
    read from it back into the text (the policy's template is the reward model's: scored as it came),
    else the format it was read in (`Reading.format`)."""
    if reading.messages is None or not isinstance(encoder, ChatEncoder) or isinstance(item, PairItem):
        return reading.format
    try:
        rendered = encoder.render(item)
    except ConversationError:  # it rendered when it was encoded; a template that changed its mind
        return reading.format
    return OWN_TEMPLATE if is_own_rendering(text, rendered) else reading.format


async def _score_readings(
    request: Request, response: Response, readings: Sequence[Reading], where: Sequence[str],
    fields: list[tuple[str, str]], penalty: float,
) -> tuple[Scored, list[Item]]:  # fmt: skip
    state = state_of(request)
    require_uncertainty(state.current_model(), penalty)
    items = [item_of(reading, at) for reading, at in zip(readings, where, strict=True)]
    scored = await score_items(request, state, items, where, fields)
    model_headers(response, scored)
    return scored, items


async def get_reward(
    body: GetRewardRequest, request: Request, response: Response, penalty: PenaltyDep
) -> GetRewardResponse:
    """OpenRLHF's remote reward model: rewards (scores, minus λ·uncertainty with ?uncertainty_penalty=λ),
    scores in [0, 1] (the model's own verdict, never penalised), extra_logs."""
    prompts = body.prompts if body.prompts is not None else [None] * len(body.query)
    if len(prompts) != len(body.query):
        raise ValidationFailed(
            f"{len(body.query)} queries but {len(prompts)} prompts: send one prompt per query"
        )
    readings = [read_rendered(q, p) for q, p in zip(body.query, prompts, strict=True)]
    fields = [(f"query[{i}]", q) for i, q in enumerate(body.query)]
    fields += [(f"prompts[{i}]", p) for i, p in enumerate(body.prompts or [])]
    where = [f"query[{i}]" for i in range(len(body.query))]
    scored, items = await _score_readings(request, response, readings, where, fields, penalty)
    encoder = scored.model.encoder
    how = [read_as(r, item, q, encoder) for r, item, q in zip(readings, items, body.query, strict=True)]
    return GetRewardResponse.of(scored, how, penalised_scores(scored, penalty))


async def _score_texts(
    body: RenderedTextsRequest, request: Request, response: Response, penalty: float
) -> Scored:
    """Score each rendered text of a vLLM/SGLang-style body as what it reads as (`read_rendered`)."""
    readings = [read_rendered(text) for text in body.texts]
    fields = [(f"input[{i}]", text) for i, text in enumerate(body.texts)]
    where = [f"input[{i}]" for i in range(len(body.texts))]
    scored, _ = await _score_readings(request, response, readings, where, fields, penalty)
    return scored


async def classify(
    body: ClassifyRequest, request: Request, response: Response, penalty: PenaltyDep
) -> ClassifyResponse:
    """vLLM-compatible classification: one class per text, probs[-1] is the reward (veRL)."""
    scored = await _score_texts(body, request, response, penalty)
    return ClassifyResponse.of(scored, body.apply_activation, penalised_scores(scored, penalty))


async def embeddings(
    body: EmbeddingsRequest, request: Request, response: Response, penalty: PenaltyDep
) -> EmbeddingsResponse:
    """SGLang-compatible reward: embedding[-1] is the raw score (veRL with an SGLang reward model)."""
    scored = await _score_texts(body, request, response, penalty)
    return EmbeddingsResponse.of(scored, penalised_scores(scored, penalty))


async def slime_reward(
    body: SlimeRewardRequest, request: Request, response: Response, penalty: PenaltyDep
) -> float:
    """slime's remote reward model: one sample in, its score (minus λ·uncertainty) out as one JSON number."""
    fields = [("prompt", body.prompt), ("response", body.response)]
    reading = read_prompt_and_response(body.prompt, body.response)
    scored, _ = await _score_readings(request, response, [reading], ["prompt"], fields, penalty)
    return float(penalised_scores(scored, penalty)[0])
