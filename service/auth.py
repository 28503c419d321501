"""Bearer-token checks (constant-time). Scoring routes use RLHF_API_KEY; /admin/* uses RLHF_ADMIN_KEY,
falling back to RLHF_API_KEY when no admin key is set. With no key configured a route is open (local use).

Both checks are FastAPI dependencies that read the settings of the app serving the request
(`service.dependencies.state_of`) and nothing else. They run before the body is validated, so a request
without the key learns nothing about what a valid body is. They are ``async def`` and take only the
request, for the reasons `service.dependencies` gives (no thread hop, one dependency per request).
"""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from service.dependencies import state_of
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


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for scoring routes."""
    _check(request, state_of(request).settings.api_key, "API key (RLHF_API_KEY)")


async def require_admin_key(request: Request) -> None:
    """FastAPI dependency for /admin routes."""
    settings = state_of(request).settings
    key = settings.admin_key if settings.admin_key is not None else settings.api_key
    _check(request, key, "admin key (RLHF_ADMIN_KEY)")
