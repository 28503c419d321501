"""The alert rules and the Grafana dashboard query only metrics the service really exports.

A dashboard panel or an alert on a misspelt metric shows "no data" forever and never fires, without any
error. So every PromQL expression in deploy/prometheus/alerts.yml and deploy/grafana/dashboards/*.json
is parsed (promql-parser, a PromQL parser from PyPI, so this stays a fast test) and each selector is
checked against the metrics of `service.metrics.ServiceMetrics`, which must themselves match the
names of the team's service contract. Prometheus' own promtool runs in test_alert_rules.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as pq
import pytest
import yaml
from fastapi.routing import APIRoute
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service.api import router
from service.metrics import ServiceMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

# The metrics table of deploy/README.md: name -> (type, labels).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "rlhf_requests": ("counter", frozenset({"route", "status"})),
    "rlhf_request_duration_seconds": ("histogram", frozenset({"route"})),
    "rlhf_queue_depth": ("gauge", frozenset()),
    "rlhf_queue_wait_seconds": ("histogram", frozenset()),
    "rlhf_batch_pairs": ("histogram", frozenset()),
    "rlhf_batch_tokens": ("histogram", frozenset()),
    "rlhf_padding_ratio": ("histogram", frozenset()),
    "rlhf_inference_seconds": ("histogram", frozenset()),
    "rlhf_scored_pairs": ("counter", frozenset()),
    "rlhf_truncated_pairs": ("counter", frozenset()),
    "rlhf_rejected": ("counter", frozenset({"reason"})),
    "rlhf_score": ("histogram", frozenset()),
    "rlhf_ready": ("gauge", frozenset()),
    "rlhf_model_info": ("gauge", frozenset({"name", "version", "sha256", "precision"})),
    "rlhf_reloads": ("counter", frozenset({"result"})),
    "rlhf_provider_info": ("gauge", frozenset({"provider", "requested"})),  # deploy/README.md "GPU"
    # the live watch (service/watch.py), deploy/README.md "Reward watch"
    "rlhf_watch_window_items": ("gauge", frozenset()),
    "rlhf_score_drift_std": ("gauge", frozenset()),
    "rlhf_score_std_ratio": ("gauge", frozenset()),
    "rlhf_score_length_correlation": ("gauge", frozenset()),
    "rlhf_truncated_share": ("gauge", frozenset()),
    "rlhf_uncertainty_mean": ("gauge", frozenset()),
}
WATCH_ALERTS = {  # the live watch: each statistic has an alert and a dashboard panel
    "rlhf_score_drift_std": "RewardScoreDrift",
    "rlhf_score_std_ratio": "RewardScoreSpreadCollapsed",
    "rlhf_score_length_correlation": "RewardScoreTracksLength",
    "rlhf_truncated_share": "RewardInputsTruncated",
    "rlhf_uncertainty_mean": "RewardUncertaintyRising",
}
TARGET_LABELS = frozenset({"job", "instance", "service"})  # added by Prometheus / the scrape config
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Grafana's interval variables, replaced by a literal duration so the expression parses as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}


@dataclass(frozen=True)
class Series:
    """One exported time-series name: what it may be queried with."""

    labels: frozenset[str]
    cumulative: bool  # counters and histogram parts: rate()/increase() apply, bare values mean little


@dataclass
class Usage:
    """What one expression uses."""

    selectors: list[tuple[str, list[str], bool]] = field(default_factory=list)  # name, labels, in rate()
    route_values: list[str] = field(default_factory=list)  # values matched by route= / route=~
    grouping: list[str] = field(default_factory=list)
    quantile_groupings: list[list[str]] = field(default_factory=list)


def exported_series() -> dict[str, Series]:
    """Series names the service exports, from its own registry (plus `up`, which Prometheus adds)."""
    metrics = ServiceMetrics()
    series: dict[str, Series] = {"up": Series(frozenset(), cumulative=False)}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type  # the public exposition hides label names of metrics without samples
        labels = frozenset(metric._labelnames)
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[metric._name + suffix] = Series(labels | extra, cumulative=kind != "gauge")
    return series


def usage_of(expr: str) -> Usage:
    """Parse PromQL (raises ValueError on a syntax error) and list selectors and grouping labels."""
    usage = Usage()
    rate_depth = [0]

    def pre(node: Any) -> None:
        if isinstance(node, pq.Call) and node.func.name in {"rate", "increase", "irate", "delta"}:
            rate_depth[0] += 1
        if isinstance(node, pq.Call) and node.func.name == "histogram_quantile":
            inner = node.args[1]
            labels = inner.modifier.labels if isinstance(inner, pq.AggregateExpr) and inner.modifier else []
            usage.quantile_groupings.append(list(labels))
        if isinstance(node, pq.VectorSelector):
            labels = [m.name for m in node.matchers.matchers]
            usage.selectors.append((node.name, labels, rate_depth[0] > 0))
            usage.route_values += [
                alternative
                for m in node.matchers.matchers
                if m.name == "route" and (m.op == pq.MatchOp.Equal or m.op == pq.MatchOp.Re)
                for alternative in m.value.split("|")
            ]
        if isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            usage.grouping.extend(node.modifier.labels)

    def post(node: Any) -> None:
        if isinstance(node, pq.Call) and node.func.name in {"rate", "increase", "irate", "delta"}:
            rate_depth[0] -= 1

    pq.walk(pq.parse(expr), pre, post)
    return usage


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((f"{path.name}: {panel['title']} [{target['refId']}]", expr))
    return found


ALL_EXPRESSIONS = alert_expressions() + dashboard_expressions()


def test_service_exports_exactly_the_contract_metrics() -> None:
    text = ServiceMetrics().render().decode()
    families = {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # prometheus_client's creation timestamps
    }
    assert families == {name: kind for name, (kind, _) in CONTRACT.items()}
    series = exported_series()
    for name, (kind, labels) in CONTRACT.items():
        first = name + SUFFIXES[kind][0]
        assert series[first].labels - {"le"} == labels, name


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRESSIONS, ids=[w for w, _ in ALL_EXPRESSIONS])
def test_expression_uses_only_exported_metrics_and_labels(where: str, expr: str) -> None:
    series = exported_series()
    usage = usage_of(expr)
    assert usage.selectors, f"{where}: no metric selector in {expr!r}"
    allowed_grouping = set(TARGET_LABELS)
    for name, labels, in_rate in usage.selectors:
        assert name in series, f"{where}: {name!r} is not exported by the service ({expr!r})"
        known = series[name].labels | TARGET_LABELS
        assert set(labels) <= known, f"{where}: {name} has no label {set(labels) - known}"
        assert in_rate == series[name].cumulative, (
            f"{where}: {name} {'must not' if in_rate else 'must'} be wrapped in rate()/increase()"
        )
        allowed_grouping |= known
    assert set(usage.grouping) <= allowed_grouping, f"{where}: groups by unknown labels {usage.grouping}"
    for labels in usage.quantile_groupings:
        assert "le" in labels, f"{where}: histogram_quantile over a sum that drops `le`"


def test_route_labels_name_real_routes() -> None:
    """`route` holds the route's path template; a filter on a path the app lacks matches nothing."""
    paths = {route.path for route in router.routes if isinstance(route, APIRoute)}
    used = {value for _, expr in ALL_EXPRESSIONS for value in usage_of(expr).route_values}
    assert used, "no expression filters on route"
    assert used <= paths, used - paths


def test_checker_rejects_unknown_metrics_and_bad_syntax() -> None:
    """The checks above must be able to fail."""
    series = exported_series()
    assert "rlhf_request_total" not in series  # the classic typo: singular
    assert usage_of("rate(rlhf_request_total[5m])").selectors[0][0] == "rlhf_request_total"
    with pytest.raises(ValueError):
        usage_of("sum(rate(rlhf_requests_total[5m])")
    assert usage_of("sum by (le) (rate(rlhf_score_bucket[1m]))").selectors == [
        ("rlhf_score_bucket", [], True)
    ]
    assert usage_of("rlhf_queue_depth").selectors == [("rlhf_queue_depth", [], False)]


def test_alert_rules_follow_the_prometheus_rule_schema() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(rules) == {"groups"}
    names = []
    duration = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(rule["annotations"])
            if "for" in rule:
                assert duration.match(rule["for"]), rule["for"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    # the alerts the issue asks for: high 429 rate, high 5xx rate, p99 latency, not ready / down
    exprs = " ".join(rule_expr for _, rule_expr in alert_expressions())
    for needle in ('status="429"', 'status=~"5.."', "histogram_quantile(0.99", "rlhf_ready == 0", "up{"):
        assert needle in exprs


def test_alert_status_labels_match_what_the_service_records() -> None:
    """`status` holds the numeric code as text ("429"), which the 429/5xx alerts match on."""
    metrics = ServiceMetrics()
    metrics.requests.labels(route="/score", status="429").inc()
    text = metrics.render().decode()
    assert 'rlhf_requests_total{route="/score",status="429"} 1.0' in text


def test_dashboard_shows_every_required_view() -> None:
    assert DASHBOARDS, "no dashboard JSON in deploy/grafana/dashboards"
    dashboard = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    by_title = {panel["title"]: panel for panel in dashboard["panels"]}
    exprs = {title: " ".join(t["expr"] for t in panel["targets"]) for title, panel in by_title.items()}
    joined = " ".join(exprs.values())
    for metric in (
        "rlhf_scored_pairs_total",
        "rlhf_queue_depth",
        "rlhf_batch_pairs",
        "rlhf_padding_ratio",
        "rlhf_score_bucket",
        "rlhf_model_info",
        "rlhf_inference_seconds",
        "rlhf_rejected_total",
    ):
        assert metric in joined, metric
    assert "histogram_quantile(0.5," in joined and "histogram_quantile(0.99," in joined
    assert "by (status)" in joined  # errors by code
    heatmaps = [p for p in dashboard["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])
    datasource_uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource_uids == {ds["uid"] for ds in provisioned["datasources"]}


def test_every_watch_statistic_has_its_alert_and_a_panel() -> None:
    alerts = dict(alert_expressions())
    panels = " ".join(expr for _, expr in dashboard_expressions())
    for metric, alert in WATCH_ALERTS.items():
        assert alert in alerts, alert
        assert metric in {name for name, _, _ in usage_of(alerts[alert]).selectors}, (alert, metric)
        assert metric in panels, f"no dashboard panel shows {metric}"
    assert "rlhf_watch_window_items" in panels  # so a NaN gauge can be told apart from a broken one


def test_readme_documents_every_metric_and_alert() -> None:
    """deploy/README.md is where operators read what a metric means and what to do about an alert."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for name, (kind, _) in CONTRACT.items():
        shown = name + "_total" if kind == "counter" else name
        assert f"| `{shown}` |" in text, f"no row for {shown} in the metrics table"
    for alert, _ in alert_expressions():
        assert f"| `{alert}` (" in text, f"no row for {alert} in the alerts table"
