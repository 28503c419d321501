"""The client's error tree (drawn in `service.client`), and how an error response is read."""

from __future__ import annotations

import httpx


class RewardClientError(Exception):
    """Base of the client's errors."""


class RewardUnavailable(RewardClientError):
    """The service could not be reached or kept refusing after all retries."""


class RequestRejected(RewardClientError):
    """The service refused the request as malformed or unauthorised; retrying would not help."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"HTTP {status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message


def error_of(response: httpx.Response) -> tuple[str, str]:
    """(type, message) from the service's JSON error body, or the raw text."""
    try:
        error = response.json()["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.text[:200]


def retry_after_of(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header, or None (absent, or an HTTP-date: our own backoff applies)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
