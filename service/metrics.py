"""Every Prometheus object of the service, on a registry of its own (one per app, so tests can build
several apps in one process). Names are a contract (team SERVICE_CONTRACT.md): the Grafana dashboard and
the alert rules query them, so rename only on purpose.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
SCORE_BUCKETS = (-10.0, -5.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
REJECT_REASONS = ("queue_full", "too_large", "unauthorized", "draining", "invalid")


class ServiceMetrics:
    """Recorded where the fact is known: requests in the middleware, batches in the batcher."""

    def __init__(self) -> None:
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
        for reason in REJECT_REASONS:  # export zeros so alert expressions have a series from the start
            self.rejected.labels(reason=reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)

    def set_model(self, name: str, version: str, sha256: str, precision: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, sha256=sha256, precision=precision).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
