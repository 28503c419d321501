"""Bearer-token checks (constant-time). Scoring routes use RLHF_API_KEY; /admin/* uses RLHF_ADMIN_KEY,
falling back to RLHF_API_KEY when no admin key is set. With no key configured a route is open (local use).

Both checks are FastAPI dependencies that receive the settings (`SettingsDep`), so they read the keys
of the app that serves the request and nothing else.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from service.dependencies import SettingsDep
from service.errors import Unauthorized


def _check(request: Request, key: SecretStr | None, what: str) -> None:
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"missing bearer token: send 'Authorization: Bearer <{what}>'")
    if not hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode()):
        raise Unauthorized(f"wrong {what}")


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """FastAPI dependency for scoring routes."""
    _check(request, settings.api_key, "API key (RLHF_API_KEY)")


def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """FastAPI dependency for /admin routes."""
    key = settings.admin_key if settings.admin_key is not None else settings.api_key
    _check(request, key, "admin key (RLHF_ADMIN_KEY)")
