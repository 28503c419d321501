"""Bodies of the trainer-protocol routes (service/trainers.py), each in the shape its trainer sends and
reads; the sources they follow are named in docs/ (one page per trainer).

Request models ignore fields they do not use (the trainers send more than a reward model needs, and
vLLM's own server accepts them too); what they use is validated, and a bad value is a 422 naming the
field. Each response model builds itself from the batcher's `Scored` (`of`), so the routes only await.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.batcher import Scored
from service.schemas import SCORES, ModelRef
from service.submit import model_ref

# ---- OpenRLHF: POST /get_reward ----------------------------------------------------------------------
OWN_TEMPLATE: Final = "rm_template"  # `read_as` of a text the bundle's own chat template renders back
READ_AS = (
    "how each query was read (service/chat_text.py): 'rm_template' (a chat-templated text that the "
    "reward model's own chat template renders back: scored as it came), 'chatml' | 'llama3' | 'gemma' "
    "(a chat-templated text, re-rendered in the reward model's input format), 'hh' (an hh-rlhf "
    "dialogue) or 'text' (plain text: the answer is what follows the prompt)"
)


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward request (one sample per request from its agent executor, many at once)."""

    model_config = ConfigDict(extra="ignore")
    query: list[str] = Field(
        description="prompt + response, as OpenRLHF sends it: after the policy's chat template, special "
        "tokens included, or plain text (may be empty)"
    )
    prompts: list[str] | None = Field(
        None, description="the prompt of each query; the answer is query[len(prompt):] when it is a prefix"
    )
    labels: list[Any] | None = Field(
        None, description="accepted and unused: the reward model judges the answer, not a reference label"
    )


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(
        description=SCORES + ", minus λ·uncertainty with ?uncertainty_penalty=λ: what OpenRLHF uses as "
        "the reward"
    )
    scores: list[float] = Field(
        description="the reward in [0, 1]: sigmoid((score - train mean) / train std), the RM's own "
        "calibration, never penalised (OpenRLHF reads it for dynamic filtering)"
    )
    normalized: list[float] = Field(description="(score - train mean) / train std, from the manifest")
    truncated: list[bool]
    read_as: list[str] = Field(description=READ_AS)
    extra_logs: dict[str, list[float]] = Field(
        description="per item, numbers only (OpenRLHF turns each value into a tensor and logs it): "
        "rm_model_version (first 24 bits of the bundle's manifest sha256), rm_truncated (1 = cut), "
        "rm_uncertainty (raw score units; only when the bundle has an ensemble)"
    )
    model: ModelRef

    @classmethod
    def of(cls, scored: Scored, read_as: list[str], rewards: np.ndarray) -> GetRewardResponse:
        """``rewards``: the raw scores, penalised or not (service/trainer_penalty.py)."""
        model, n = scored.model, len(scored.scores)
        logs = {
            "rm_model_version": [float(model.version_id)] * n,
            "rm_truncated": scored.truncated.astype(np.float64).tolist(),
        }
        if scored.uncertainty is not None:
            logs["rm_uncertainty"] = scored.uncertainty.tolist()
        return cls(
            rewards=rewards.tolist(),
            scores=model.calibrated(scored.scores).tolist(),
            normalized=model.normalize(scored.scores).tolist(),
            truncated=scored.truncated.tolist(),
            read_as=read_as,
            extra_logs=logs,
            model=model_ref(scored),
        )


# ---- vLLM-compatible: POST /classify (veRL) and SGLang-compatible POST /v1/embeddings ------------------
class UsageInfo(BaseModel):
    prompt_tokens: int = Field(description="real tokens the reward model read (after truncation)")
    total_tokens: int
    completion_tokens: int | None = 0
    prompt_tokens_details: None = None


def _usage(scored: Scored) -> UsageInfo:
    return UsageInfo(prompt_tokens=scored.tokens, total_tokens=scored.tokens)


class RenderedTextsRequest(BaseModel):
    """What vLLM's and SGLang's pooling routes take: one rendered prompt + response, or a list of them."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(
        None, description="accepted and not checked: the loaded bundle answers (its name is in the response)"
    )
    input: str | list[str] = Field(
        description="prompt + response, rendered (read as /get_reward reads a query without its prompt); "
        "a list scores each"
    )

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class ClassifyRequest(RenderedTextsRequest):
    use_activation: bool | None = Field(
        None,
        strict=True,
        description="true (default, as vLLM): probs = [reward in [0, 1]]; false: [raw score]",
    )
    activation: bool | None = Field(
        None, strict=True, description="vLLM's older name of use_activation (veRL sends it)"
    )
    softmax: bool | None = Field(None, strict=True, description="vLLM's oldest name of use_activation")

    @model_validator(mode="after")
    def _one_activation(self) -> ClassifyRequest:
        given = {v for v in (self.use_activation, self.activation, self.softmax) if v is not None}
        if len(given) > 1:
            raise ValueError("use_activation, activation and softmax disagree: send one of them")
        return self

    @property
    def apply_activation(self) -> bool:
        chosen = [v for v in (self.use_activation, self.activation, self.softmax) if v is not None]
        return chosen[0] if chosen else True


CLASS_LABEL = "LABEL_0"  # what vLLM reports for a one-label model with transformers' default id2label


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float] = Field(
        description="one class: [raw score], or [reward in [0, 1]] with activation (of the penalised "
        "score with ?uncertainty_penalty=λ)"
    )
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo

    @classmethod
    def of(cls, scored: Scored, activation: bool, rewards: np.ndarray) -> ClassifyResponse:
        """``rewards``: the raw scores, penalised or not; the [0, 1] reward is their calibration."""
        values = scored.model.calibrated(rewards) if activation else rewards
        data = [
            ClassificationData(index=i, label=CLASS_LABEL, probs=[float(v)], num_classes=1)
            for i, v in enumerate(values)
        ]
        return cls(
            id=f"classify-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=scored.model.name,
            data=data,
            usage=_usage(scored),
        )


class EmbeddingsRequest(RenderedTextsRequest):
    encoding_format: Literal["float"] = Field("float", description="only float: the embedding is [score]")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] = Field(
        description="[raw score] (minus λ·uncertainty with ?uncertainty_penalty=λ): how SGLang serves a "
        "reward model"
    )
    index: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: UsageInfo

    @classmethod
    def of(cls, scored: Scored, rewards: np.ndarray) -> EmbeddingsResponse:
        """``rewards``: the raw scores, penalised or not."""
        data = [EmbeddingData(embedding=[float(s)], index=i) for i, s in enumerate(rewards)]
        return cls(data=data, model=scored.model.name, usage=_usage(scored))


# ---- slime: --rm-type remote_rm --rm-url http://host:8000/slime/reward -------------------------------
class SlimeRewardRequest(BaseModel):
    """One sample, as slime's `remote_rm` posts it; the answer is one JSON number (its reward)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(
        description="the prompt as slime holds it: rendered text when --apply-chat-template (then read "
        "back into its conversation, as /get_reward reads a query), else the dataset's text"
    )
    response: str = Field(description="the policy's response")
    label: Any = Field(None, description="accepted and unused")

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError(
                "prompt is a list of chat messages; this reward model reads text: run slime with "
                "--apply-chat-template (its prompt is then the rendered text) or render the messages "
                "in the reward model's format before they reach slime"
            )
        return value
