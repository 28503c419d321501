"""service.errors: the one table of status codes and the one builder of error responses."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import httpx
import pytest

from service.errors import (
    Draining,
    InferenceFailed,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReloadFailed,
    RoutingFailed,
    ServiceError,
    Unauthorized,
    ValidationFailed,
    error_response,
)
from tests.service.conftest import LiveServer

SERVICE = Path(__file__).resolve().parents[2] / "service"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (ValidationFailed("m"), 422, "validation_failed"),
        (PayloadTooLarge("m"), 413, "payload_too_large"),
        (Unauthorized("m"), 401, "unauthorized"),
        (Overloaded("m", retry_after=3), 429, "overloaded"),
        (NotReady("m"), 503, "not_ready"),
        (Draining("m"), 503, "draining"),
        (ReloadFailed("m"), 422, "reload_failed"),
        (InferenceFailed("m"), 500, "inference_failed"),
        (ServiceError("m"), 500, "service_error"),
        (RoutingFailed("m", 404), 404, "not_found"),
        (RoutingFailed("m", 405, {"Allow": "POST"}), 405, "method_not_allowed"),
        (RoutingFailed("m", 418), 418, "http_error"),
    ],
)
def test_each_error_has_one_status_and_one_body_shape(error: ServiceError, status: int, kind: str) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {"error": {"type": kind, "message": "m"}}


def test_headers_come_with_the_error() -> None:
    assert error_response(Overloaded("full", retry_after=3)).headers["retry-after"] == "3"
    assert error_response(Unauthorized("no")).headers["www-authenticate"] == "Bearer"
    assert error_response(RoutingFailed("m", 405, {"Allow": "POST"})).headers["allow"] == "POST"
    extra = error_response(PayloadTooLarge("big"), {"Connection": "close"})
    assert extra.headers["connection"] == "close"


def test_no_other_service_module_builds_an_error_body() -> None:
    """Only errors.py may write the {"error": ...} body or call error_body."""
    offenders = []
    for path in sorted(SERVICE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SERVICE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "error" for k in node.keys
            ):
                offenders.append(f"{path.name}:{node.lineno} builds an error dict")
            if isinstance(node, ast.Name) and node.id == "error_body":
                offenders.append(f"{path.name}:{node.lineno} uses error_body")
    assert not offenders, offenders


def test_starlette_errors_keep_their_status_and_headers_in_our_format(shared_live: LiveServer) -> None:
    missing = httpx.post(f"{shared_live.url}/nope", json={})
    assert missing.status_code == 404 and missing.json()["error"] == {
        "type": "not_found",
        "message": "Not Found: POST /nope",
    }
    wrong = httpx.get(f"{shared_live.url}/score")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
    bad_json = httpx.post(
        f"{shared_live.url}/score", content=b"\xff\xfe", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422 and bad_json.json()["error"]["type"] == "validation_failed"
