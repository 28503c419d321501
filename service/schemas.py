"""Request and response bodies (pydantic): what /docs shows and what FastAPI validates (422).

Size limits that are configurable (pairs per request, characters per field) are checked in `api.py`
against the settings and answered with 413; the schema only states the shape.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(
        description="prompt or dialogue so far; may be empty", examples=["How do I bake bread?"]
    )
    answer: str = Field(
        description="the response to score; may be empty", examples=["Mix flour, water, yeast..."]
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(description="pairs to score, answered in the same order")


class ModelRef(BaseModel):
    name: str
    version: str


UNCERTAINTY = "per item: std across the bundle's ensemble of quality heads, in raw score units; null when the bundle has no ensemble"
UNCERTAINTY_NORMALIZED = (
    "uncertainty / train std (the units of `normalized`); null when the bundle has no ensemble"
)
SCORES = "reward-model scores (length-corrected when the bundle has a correction: see /v1/models)"


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description=SCORES + ", same order as the input")
    normalized: list[float] = Field(description="(score - train mean) / train std, from the manifest")
    truncated: list[bool] = Field(description="whether the truncation policy cut the pair")
    uncertainty: list[float] | None = Field(description=UNCERTAINTY)
    uncertainty_normalized: list[float] | None = Field(description=UNCERTAINTY_NORMALIZED)
    model: ModelRef


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    answers: list[str] = Field(min_length=1, description="several answers to the same question")


class GroupsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: list[Group]


class GroupResult(BaseModel):
    scores: list[float] = Field(description=SCORES)
    normalized: list[float]
    truncated: list[bool]
    uncertainty: list[float] | None = Field(description=UNCERTAINTY)
    uncertainty_normalized: list[float] | None = Field(description=UNCERTAINTY_NORMALIZED)
    mean: float = Field(description="group mean of the raw scores (a baseline for RL)")
    leave_one_out_baselines: list[float] = Field(
        description="mean of the *other* answers' scores; for a group of one, the score itself"
    )
    advantages: list[float] = Field(description="score - leave-one-out baseline")


class GroupsResponse(BaseModel):
    groups: list[GroupResult]
    model: ModelRef


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(
        min_length=1, description="bundle directory, relative to RLHF_BUNDLE_ROOT or under it"
    )
    precision: str | None = Field(
        default=None, pattern="^(auto|fp32|int8)$", description="default: the setting"
    )


class ReloadResponse(BaseModel):
    model: dict[str, object]
    previous: dict[str, object] | None


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
