"""Service configuration: one pydantic-settings class, every field from an `RLHF_` environment variable.

    RLHF_BUNDLE=bundles/rm-v1 RLHF_PRECISION=int8 RLHF_API_KEY=s3cret python -m service

`rlhf serve` flags override the environment (they are passed as init arguments, which pydantic-settings
ranks above env). Every default carries a comment saying why it is what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Knobs of the scoring service (env prefix `RLHF_`)."""

    model_config = SettingsConfigDict(
        env_prefix="RLHF_", extra="ignore", env_ignore_empty=True
    )  # RLHF_API_KEY= means no key

    bundle: Path | None = Field(
        default=None, description="bundle directory; None = start unready, load via reload"
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="auto = int8 when the bundle ships it (it passed the export gate), else fp32",
    )
    host: str = "127.0.0.1"  # loopback unless asked: the container sets 0.0.0.0 explicitly
    port: int = Field(default=8000, ge=0, le=65535)
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads; 0 = one per core"
    )
    max_batch_tokens: int = Field(
        default=65536,
        ge=64,
        description="real tokens the batcher gathers per round: the pool it length-sorts",
    )
    max_batch_pairs: int = Field(default=32, ge=1, description="pairs per onnxruntime run (sub-batch)")
    subbatch_tokens: int = Field(
        default=8192,
        ge=64,
        description="padded tokens per onnxruntime run; long pairs go in smaller sub-batches",
    )
    max_padding_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="a sub-batch is cut before padding exceeds this share of its tokens (padding is waste)",
    )
    batch_wait_ms: float = Field(
        default=4.0,
        ge=0,
        description="how long the first queued pair waits for company before its batch runs",
    )
    max_queue_pairs: int = Field(
        default=2048, ge=1, description="pairs admitted and not yet scored; beyond it 429"
    )
    max_pairs_per_request: int = Field(
        default=512, ge=1, description="413 beyond it; the client chunks below it"
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="413 beyond it, checked before parsing"
    )
    max_field_chars: int = Field(
        default=50_000, ge=1, description="413 for a longer question/answer/query string"
    )
    api_key: SecretStr | None = Field(
        default=None, description="bearer token for scoring routes; None = open"
    )
    admin_key: SecretStr | None = Field(
        default=None, description="bearer token for /admin/*; None = use api_key"
    )
    bundle_root: Path | None = Field(
        default=None, description="reload confinement; None = parent of the bundle"
    )
    drain_seconds: float = Field(
        default=10.0, ge=0, description="SIGTERM: how long in-flight requests may finish"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    retry_after_seconds: int = Field(default=1, ge=1, description="Retry-After sent with 429")

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        if self.max_pairs_per_request > self.max_queue_pairs:
            raise ValueError(
                f"max_pairs_per_request ({self.max_pairs_per_request}) must not exceed max_queue_pairs "
                f"({self.max_queue_pairs}): such a request could never be admitted"
            )
        return self

    def reload_root(self) -> Path | None:
        """Directory every reloaded bundle must live under (resolved, symlinks followed)."""
        if self.bundle_root is not None:
            return self.bundle_root.resolve()
        if self.bundle is not None:
            return self.bundle.resolve().parent
        return None
