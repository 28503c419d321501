"""Service configuration: one pydantic-settings class, every field from an `RLHF_` environment variable.

    RLHF_BUNDLE=bundles/rm-v1 RLHF_PRECISION=int8 RLHF_API_KEY=s3cret python -m service
    settings = ServiceSettings.from_env(port=9000)       # flags on top of the environment

`rlhf serve` has one flag per field, generated from the descriptions below (`cli/options.py`); flags
override the environment (they are passed as init arguments, which pydantic-settings ranks above env).
:meth:`ServiceSettings.from_env` reports invalid values as the `ConfigError` every config raises.
Every default carries a comment or description saying why it is what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.bundle import PrecisionChoice
from service.configuration import settings_error
from service.providers import ProviderChoice


class ServiceSettings(BaseSettings):
    """Knobs of the scoring service (env prefix `RLHF_`)."""

    model_config = SettingsConfigDict(
        env_prefix="RLHF_", extra="ignore", env_ignore_empty=True
    )  # RLHF_API_KEY= means no key

    bundle: Path | None = Field(
        default=None, description="Bundle directory; none = start unready and load one via /admin/reload."
    )
    precision: PrecisionChoice = Field(
        default="auto",
        description="auto | fp32 | int8 | fp16 (auto = on CPU int8 when the bundle ships it: it passed the "
        "export gate; on CUDA fp16 when shipped; else fp32). fp16 runs on CPU too, slower than fp32.",
    )
    # auto: the same image and settings serve on a CPU node and on a GPU node (service/providers.py)
    provider: ProviderChoice = Field(
        default="auto",
        description="onnxruntime execution provider: auto | cpu | cuda (auto = CUDA when onnxruntime-gpu "
        "is installed, else CPU; cuda = refuse to start without it).",
    )
    length_correction: bool = Field(
        default=True,
        description="Apply the bundle's length correction (manifest length_correction) to served scores; "
        "off = the graph's scores as they are.",
    )  # on: a bundle ships a correction because its scores follow answer length (issue 13)
    # loopback unless asked: the container sets 0.0.0.0 explicitly
    host: str = Field(default="127.0.0.1", description="Bind address (0.0.0.0 to listen on every interface).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads (0 = one per core)."
    )
    max_batch_tokens: int = Field(
        default=65536,
        ge=64,
        description="Real tokens the batcher gathers per round: the pool it length-sorts.",
    )
    max_batch_pairs: int = Field(default=32, ge=1, description="Pairs per onnxruntime run (sub-batch).")
    subbatch_tokens: int = Field(
        default=8192,
        ge=64,
        description="Padded tokens per onnxruntime run; long pairs go in smaller sub-batches.",
    )
    max_padding_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A sub-batch is cut before padding exceeds this share of its tokens (padding is waste).",
    )
    batch_wait_ms: float = Field(
        default=4.0,
        ge=0,
        description="How long the first queued pair waits for batch-mates before its batch runs (ms).",
    )
    max_queue_pairs: int = Field(
        default=2048, ge=1, description="Pairs admitted and not yet scored; beyond it 429."
    )
    max_pairs_per_request: int = Field(
        default=512, ge=1, description="Pairs per request; 413 beyond it (the client chunks below it)."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Request body size; 413 beyond it, checked before parsing.",
    )
    max_field_chars: int = Field(
        default=50_000, ge=1, description="413 for a longer question/answer/query string."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token for the scoring routes; none = open."
    )
    admin_key: SecretStr | None = Field(
        default=None, description="Bearer token for /admin/*; none = the api key."
    )
    bundle_root: Path | None = Field(
        default=None,
        description="Reloaded bundles must live under this directory; none = the bundle's parent.",
    )
    drain_seconds: float = Field(
        default=10.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="critical | error | warning | info | debug."
    )
    retry_after_seconds: int = Field(default=1, ge=1, description="Retry-After sent with a 429.")
    trainer_uncertainty_penalty: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Default λ of the trainer routes (/get_reward, /classify, /v1/embeddings, /slime/reward) "
        "when a request has no ?uncertainty_penalty: their reward is score − λ·uncertainty. For trainers "
        "that build the URL themselves (veRL's reward loop). 0 = the plain score; > 0 needs an ensemble bundle.",
    )
    watch_window: int = Field(
        default=1000,
        ge=2,
        description="Served items the live watch covers (score drift, score-length correlation).",
    )
    watch_min_items: int = Field(
        default=200,
        ge=2,
        description="The watch gauges stay NaN (their alerts silent) below this many items.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        if self.max_pairs_per_request > self.max_queue_pairs:
            raise ValueError(
                f"max_pairs_per_request ({self.max_pairs_per_request}) must not exceed max_queue_pairs "
                f"({self.max_queue_pairs}): such a request could never be admitted"
            )
        if self.watch_min_items > self.watch_window:
            raise ValueError(
                f"watch_min_items ({self.watch_min_items}) must not exceed watch_window ({self.watch_window})"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        """RLHF_* environment variables with ``overrides`` on top; ConfigError naming each bad field."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise settings_error(exc, cls.__name__, secrets=("api_key", "admin_key")) from exc

    def reload_root(self) -> Path | None:
        """Directory every reloaded bundle must live under (resolved, symlinks followed)."""
        if self.bundle_root is not None:
            return self.bundle_root.resolve()
        if self.bundle is not None:
            return self.bundle.resolve().parent
        return None
