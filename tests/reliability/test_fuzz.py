"""Property-based API fuzzing (schemathesis) from the app's own OpenAPI schema against a real server.

Every operation gets generated bodies, both valid and invalid for the schema; the checks are no 5xx,
status codes / content types / headers / bodies that match the schema, and invalid data refused with
a 4xx. Examples are bounded (`max_examples`) so the whole module runs in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.reliability.figures import Figures
from tests.service.conftest import LiveServer, settings_for

MAX_EXAMPLES = 50  # per operation: 10 operations -> ~450 requests (valid and invalid), ~15 s

# The schema of an app built with default settings (no lifespan needed to render it).
schema = schemathesis.openapi.from_dict(create_app(settings_for(None)).openapi())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_server(bundle_v1: Path) -> Iterator[LiveServer]:
    # bundle_root = the bundle's parent: reload bodies the fuzzer invents must stay confined there
    with LiveServer(create_app(settings_for(bundle_v1, max_field_chars=2000))) as server:
        yield server


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case: schemathesis.Case, fuzz_server: LiveServer, figures: Figures) -> None:
    scenario = figures.scenario("fuzz")
    scenario.inputs += 1
    scenario.sent += 1
    response = case.call(base_url=fuzz_server.url, timeout=30)
    if response.status_code >= 500:
        scenario.lost += 1
    case.validate_response(response, checks=CHECKS)
    assert fuzz_server.app.state.service.model.version == "1", "a fuzzed request changed the model"
    scenario.assert_nothing_lost("fuzz")
