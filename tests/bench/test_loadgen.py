"""bench.loadgen: pre-encoded requests on raw sockets, responses read right, failures counted not hidden."""

from __future__ import annotations

import asyncio
import json

from bench.loadgen import encode_post, read_response, run_closed_loop
from tests.service.conftest import LiveServer, dead_url


def test_requests_are_valid_http_and_bad_ones_are_counted(live: LiveServer) -> None:
    host, port = "127.0.0.1", live.port
    good = {"pairs": [{"question": "\n\nHuman: Hi\n\nAssistant:", "answer": " Hello."}]}
    requests = [encode_post(host, port, "/score", good)] * 10 + [
        encode_post(host, port, "/score", {"pairs": 3})
    ]
    result = run_closed_loop(host, port, requests, connections=3)
    assert len(result.latencies) == 11 and result.seconds > 0 and result.cpu_seconds > 0
    assert len(result.errors) == 1 and result.errors[0].startswith("HTTP 422")


def test_a_dead_server_is_errors_not_a_hang() -> None:
    port = int(dead_url().rsplit(":", 1)[1])
    result = run_closed_loop(
        "127.0.0.1", port, [encode_post("127.0.0.1", port, "/score", {})] * 4, connections=2
    )
    assert len(result.errors) == 4 and not result.latencies


def test_response_parsing() -> None:
    async def parse(raw: bytes) -> tuple[int, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_response(reader)

    body = json.dumps({"ok": True}).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    assert asyncio.run(parse(head + body + b"HTTP/1.1 next")) == (200, body, True)
    assert encode_post("h", 1, "/x", {"a": 1}).endswith(b'\r\n\r\n{"a": 1}')
