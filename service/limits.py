"""Size limits: body bytes (an ASGI middleware, before any parsing) and per-request counts/lengths.

The byte limit is enforced on what actually arrives, so a chunked body without Content-Length is cut
off as soon as it crosses the limit; a declared Content-Length over the limit is refused unread.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, ValidationFailed, error_response
from service.metrics import ServiceMetrics


class BodyLimitMiddleware:
    """Read the whole request body up to `max_bytes`, answer 413 beyond it, else replay it to the app.

    It answers before routing, so it counts its own refusals in `metrics` (rlhf_rejected_total).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, f"declared Content-Length {int(declared)}")
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # client left before sending its body
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send, f"body of more than {total} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: blocks until the client disconnects

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        error = PayloadTooLarge(
            f"request too large: {what}, limit {self.max_bytes} bytes (RLHF_MAX_BODY_BYTES); "
            "send fewer pairs per request"
        )
        self.metrics.rejected.labels(reason=error.reason).inc()
        response = error_response(error, {"Connection": "close"})
        await response(scope, receive, send)


def check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise PayloadTooLarge(
            f"{n} {what} in one request, limit {limit} (RLHF_MAX_PAIRS_PER_REQUEST); split the request "
            "(service.client does this for you)"
        )


def check_fields(fields: Iterable[tuple[str, str]], limit: int) -> None:
    """Refuse any string longer than `limit` characters (413) or not encodable as UTF-8 (422);
    `fields` yields (json path, value)."""
    for where, value in fields:
        if len(value) > limit:
            raise PayloadTooLarge(
                f"{where} has {len(value)} characters, limit {limit} (RLHF_MAX_FIELD_CHARS); text beyond "
                "the model's max_length would be truncated anyway"
            )
        if not value.isascii():
            try:
                value.encode("utf-8")  # JSON may carry lone surrogates ("\ud800"); the tokenizer cannot
            except UnicodeEncodeError as exc:
                raise ValidationFailed(
                    f"{where} is not valid Unicode text: {exc.reason} at index {exc.start}"
                ) from exc
