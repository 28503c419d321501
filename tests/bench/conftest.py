"""Fixtures of the benchmark tests: the tiny bundles and the in-thread server of the service tests."""

from __future__ import annotations

from tests.service.conftest import bundle_root, bundle_v1, live  # noqa: F401  (re-exported fixtures)
