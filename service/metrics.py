"""Every Prometheus object of the service, on a registry of its own (one per app, so tests can build
several apps in one process). Names are a contract (the metrics table of deploy/README.md): the Grafana
dashboard and the alert rules query them, so rename only on purpose.

The `rlhf_score_*`, `rlhf_truncated_share`, `rlhf_uncertainty_mean` and `rlhf_watch_window_items` gauges
are the live watch (service/watch.py): statistics of the last served items against the bundle's
reference distribution, NaN until the window holds enough items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.watch import Reference, ScoreWatch

if TYPE_CHECKING:
    from service.model import LoadedModel

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
SCORE_BUCKETS = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
REJECT_REASONS = ("queue_full", "too_large", "unauthorized", "draining", "invalid")


class ServiceMetrics:
    """Recorded where the fact is known: requests in the middleware, batches in the batcher."""

    def __init__(self, watch_window: int = 1000, watch_min_items: int = 200) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rlhf_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "rlhf_request_duration_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rlhf_queue_depth", "Pairs admitted and waiting to be scored", registry=r)
        self.queue_wait = Histogram(
            "rlhf_queue_wait_seconds", "Admission to batch start", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_pairs = Histogram(
            "rlhf_batch_pairs", "Pairs per onnxruntime run", buckets=PAIR_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rlhf_batch_tokens", "Padded tokens per onnxruntime run", buckets=TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "rlhf_padding_ratio", "Padding tokens / padded tokens per run", buckets=RATIO_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "rlhf_inference_seconds", "onnxruntime time per run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.scored_pairs = Counter("rlhf_scored_pairs", "Pairs scored and returned", registry=r)
        self.truncated_pairs = Counter(
            "rlhf_truncated_pairs", "Pairs cut by the truncation policy", registry=r
        )
        self.rejected = Counter("rlhf_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.score = Histogram("rlhf_score", "Raw scores served (drift)", buckets=SCORE_BUCKETS, registry=r)
        self.ready = Gauge("rlhf_ready", "1 when a model is loaded and its canary passed", registry=r)
        self.model_info = Gauge(
            "rlhf_model_info",
            "Loaded bundle (value 1)",
            ["name", "version", "sha256", "precision"],
            registry=r,
        )
        self.reloads = Counter("rlhf_reloads", "Bundle reloads by result", ["result"], registry=r)
        self.provider_info = Gauge(
            "rlhf_provider_info",
            "onnxruntime execution provider running the loaded graph (value 1), and the --provider asked",
            ["provider", "requested"],
            registry=r,
        )
        self.watch = ScoreWatch(watch_window, watch_min_items)
        self.watch_items = Gauge(
            "rlhf_watch_window_items",
            "Served items in the live watch window (reset on model change)",
            registry=r,
        )
        self.score_drift = Gauge(
            "rlhf_score_drift_std",
            "(window mean score - manifest reference mean) / reference std; NaN below the minimum items",
            registry=r,
        )
        self.score_std_ratio = Gauge(
            "rlhf_score_std_ratio",
            "Window score std / manifest reference std; NaN below the minimum items",
            registry=r,
        )
        self.score_length_correlation = Gauge(
            "rlhf_score_length_correlation",
            "Pearson(score, answer characters) over the window; NaN below the minimum items or without variance",
            registry=r,
        )
        self.truncated_share = Gauge(
            "rlhf_truncated_share", "Share of window items cut by the truncation policy", registry=r
        )
        self.uncertainty_mean = Gauge(
            "rlhf_uncertainty_mean",
            "Mean per-item uncertainty over the window, in reference std units; NaN until items carry one",
            registry=r,
        )
        self._publish_watch()
        for reason in REJECT_REASONS:  # export zeros so alert expressions have a series from the start
            self.rejected.labels(reason=reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)

    def set_model(self, name: str, version: str, sha256: str, precision: str) -> None:
        """A model starts serving (first load or reload): also starts the watch's window afresh."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, sha256=sha256, precision=precision).set(1)
        self.watch.serving(_model_key(sha256, precision))
        self._publish_watch()

    def set_provider(self, provider: str | None, requested: str) -> None:
        """The provider a model that starts serving runs on (`LoadedModel.provider`; "unknown" for an
        engine that does not say). `requested` auto with provider CPUExecutionProvider on a GPU node
        means CUDA could not start there."""
        self.provider_info.clear()
        self.provider_info.labels(provider=provider or "unknown", requested=requested).set(1)

    def observe_served(
        self,
        model: LoadedModel,
        answers: Sequence[str],
        scores: np.ndarray,
        truncated: np.ndarray,
        uncertainty: np.ndarray | None = None,
    ) -> None:
        """Feed served items to the live watch (the batcher calls it once per onnxruntime run, for the
        requests that run answered). `uncertainty`: per-item, in raw score units like `scores`; None
        or NaN where there is none."""
        stats = model.bundle.manifest.score
        accepted = self.watch.observe(
            _model_key(model.bundle.sha256, model.precision),
            Reference(stats.mean, stats.std),
            scores,
            [len(answer) for answer in answers],
            truncated,
            uncertainty,
        )
        if accepted:
            self._publish_watch()

    def _publish_watch(self) -> None:
        reading = self.watch.reading()
        self.watch_items.set(reading.items)
        self.score_drift.set(reading.drift_std)
        self.score_std_ratio.set(reading.std_ratio)
        self.score_length_correlation.set(reading.length_correlation)
        self.truncated_share.set(reading.truncated_share)
        self.uncertainty_mean.set(reading.uncertainty_mean)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _model_key(sha256: str, precision: str) -> str:
    return f"{sha256}/{precision}"
