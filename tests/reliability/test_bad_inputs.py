"""Bad inputs against a real server: each gets a clear 4xx with a JSON error body, and the server keeps
serving. Empty strings are not bad input (a policy may answer nothing): they get a finite score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from tests.reliability.figures import Figures
from tests.service.conftest import LiveServer, settings_for

MAX_BODY = 256 * 1024  # small, so "too many bytes" is cheap to reach
MAX_PAIRS = 16
PAIR = {"question": "How do I bake bread?", "answer": "Mix flour, water, salt and yeast."}
JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> bytes:
    return b'{"pairs": ' + b"[" * depth + b"]" * depth + b"}"


# name -> (raw body, headers, expected status). Raw bytes, so nothing is "fixed" by the client library.
CASES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "megabyte string (body over the byte limit)": (
        b'{"pairs": [{"question": "q", "answer": "' + b"a" * 1_048_576 + b'"}]}', JSON, 413),
    "100k-character string (under the byte limit, over the field limit)": (
        b'{"pairs": [{"question": "' + b"q" * 100_000 + b'", "answer": "a"}]}', JSON, 413),
    "invalid UTF-8 bytes": (b'{"pairs": [{"question": "\xff\xfe\xc3", "answer": "a"}]}', JSON, 422),
    "invalid UTF-8 outside any string": (b"\x80\x81\x82", JSON, 422),
    "lone UTF-16 surrogate escape": (b'{"pairs": [{"question": "\\ud800", "answer": "a"}]}', JSON, 422),
    "truncated JSON": (b'{"pairs": [{"question": "q", "answer": ', JSON, 422),
    "empty body": (b"", JSON, 422),
    "top-level array": (b"[]", JSON, 422),
    "text/plain content type": (b'{"pairs": [{"question": "q", "answer": "a"}]}', {"Content-Type": "text/plain"}, 422),
    "form content type": (b"pairs=1", {"Content-Type": "application/x-www-form-urlencoded"}, 422),
    "multipart content type": (
        b"--x\r\nContent-Disposition: form-data; name=\"pairs\"\r\n\r\n1\r\n--x--\r\n",
        {"Content-Type": "multipart/form-data; boundary=x"}, 422),
    "deeply nested JSON (100k levels)": (nested(100_000), JSON, 422),
    "nested JSON (500 levels)": (nested(500), JSON, 422),
    "number where a string belongs": (b'{"pairs": [{"question": 1, "answer": "a"}]}', JSON, 422),
    "null where a string belongs": (b'{"pairs": [{"question": null, "answer": "a"}]}', JSON, 422),
    "list where a string belongs": (b'{"pairs": [{"question": ["q"], "answer": "a"}]}', JSON, 422),
    "huge number literal": (b'{"pairs": [{"question": 1e99999, "answer": "a"}]}', JSON, 422),
    "NaN literal": (b'{"pairs": [{"question": NaN, "answer": "a"}]}', JSON, 422),
    "missing field": (b'{"pairs": [{"question": "q"}]}', JSON, 422),
    "unknown field": (b'{"pairs": [{"question": "q", "answer": "a", "x": 1}]}', JSON, 422),
    "null pairs": (b'{"pairs": null}', JSON, 422),
    "too many pairs": (
        b'{"pairs": [' + b",".join([b'{"question": "q", "answer": "a"}'] * (MAX_PAIRS + 1)) + b"]}", JSON, 413),
}  # fmt: skip


def many(item: bytes, n: int) -> bytes:
    return b"[" + b",".join([item] * n) + b"]"


LONG = b'"' + b"q" * 100_000 + b'"'  # over the field limit, under the byte limit
# route -> name -> (raw body, expected status): what each trainer protocol gets wrong in its own shape
ROUTE_CASES: dict[str, dict[str, tuple[bytes, int]]] = {
    "/get_reward": {
        "query is a string, not a list": (b'{"query": "prompt answer"}', 422),
        "query holds null": (b'{"query": [null], "prompts": ["p"]}', 422),
        "prompt is a number": (b'{"query": ["q"], "prompts": [1]}', 422),
        "fewer prompts than queries": (b'{"query": ["a", "b"], "prompts": ["a"]}', 422),
        "100k-character query": (b'{"query": [' + LONG + b'], "prompts": [""]}', 413),
        "100k-character prompt": (b'{"query": ["q"], "prompts": [' + LONG + b"]}", 413),
        "too many queries": (b'{"query": ' + many(b'"q"', MAX_PAIRS + 1) + b"}", 413),
        "lone surrogate in a query": (b'{"query": ["\\ud800"]}', 422),
    },
    "/classify": {
        "no input": (b'{"model": "rm"}', 422),
        "input is a number": (b'{"input": 123}', 422),
        "token ids instead of text": (b'{"input": [[101, 2023, 102]]}', 422),
        "input holds null": (b'{"input": ["a", null]}', 422),
        "activation is not a bool": (b'{"input": "x", "use_activation": "maybe"}', 422),
        "activations disagree": (b'{"input": "x", "use_activation": true, "activation": false}', 422),
        "100k-character input": (b'{"input": ' + LONG + b"}", 413),
        "too many inputs": (b'{"input": ' + many(b'"x"', MAX_PAIRS + 1) + b"}", 413),
        "lone surrogate in the input": (b'{"input": "\\udfff"}', 422),
    },
    "/v1/embeddings": {
        "no input": (b'{"model": "rm"}', 422),
        "base64 encoding": (b'{"input": "x", "encoding_format": "base64"}', 422),
        "input is an object": (b'{"input": {"text": "x"}}', 422),
        "too many inputs": (b'{"input": ' + many(b'"x"', MAX_PAIRS + 1) + b"}", 413),
    },
    "/slime/reward": {
        "chat messages as the prompt": (b'{"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello"}', 422),
        "no response": (b'{"prompt": "p", "label": "l"}', 422),
        "null prompt": (b'{"prompt": null, "response": "r"}', 422),
        "a list of samples": (b'[{"prompt": "p", "response": "r"}]', 422),
        "100k-character response": (b'{"prompt": "p", "response": ' + LONG + b"}", 413),
        "number as the response": (b'{"prompt": "p", "response": 0.5}', 422),
    },
}  # fmt: skip
TRAINER_ROUTES = list(ROUTE_CASES)


@pytest.fixture(scope="module")
def server(bundle_v1: Path) -> Iterator[LiveServer]:
    settings = settings_for(bundle_v1, max_body_bytes=MAX_BODY, max_pairs_per_request=MAX_PAIRS)
    with LiveServer(create_app(settings)) as live:
        yield live


def _assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] and len(error["message"]) > 10, error


def _still_serving(url: str) -> None:
    response = httpx.post(f"{url}/score", json={"pairs": [PAIR]}, timeout=30)
    assert response.status_code == 200 and math.isfinite(response.json()["scores"][0])


@pytest.mark.parametrize("route", ["/score", "/score/groups", *TRAINER_ROUTES])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_clear_4xx(server: LiveServer, figures: Figures, name: str, route: str) -> None:
    scenario = figures.scenario("bad-inputs")
    body, headers, status = CASES[name]
    if route != "/score" and status == 413 and "pairs" in name:
        status = 422  # the /score body shape is wrong for the other routes: refused before counting
    scenario.inputs += 1
    scenario.sent += 2
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{server.url}{route}", content=body, headers=headers)
    if response.status_code >= 500:
        scenario.lost += 1
    if route == "/score":
        _assert_error(response, status)
    else:  # other bodies: the same bytes are still a 4xx with a JSON error (shape differs per route)
        assert 400 <= response.status_code < 500, response.text[:300]
        assert response.json()["error"]["type"]
    _still_serving(server.url)
    scenario.assert_nothing_lost(name)


@pytest.mark.parametrize(
    ("route", "name"), [(route, name) for route, cases in ROUTE_CASES.items() for name in cases]
)
def test_bad_input_in_each_trainer_protocol_is_a_clear_4xx(
    server: LiveServer, figures: Figures, route: str, name: str
) -> None:
    """Each protocol's own mistakes: the service's error format, the right status, still serving."""
    scenario = figures.scenario("bad-inputs")
    body, status = ROUTE_CASES[route][name]
    scenario.inputs += 1
    scenario.sent += 2
    response = httpx.post(f"{server.url}{route}", content=body, headers=JSON, timeout=30)
    if response.status_code >= 500:
        scenario.lost += 1
    _assert_error(response, status)
    _still_serving(server.url)
    scenario.assert_nothing_lost(f"{route}: {name}")


def test_chunked_body_without_content_length_is_cut_at_the_limit(
    server: LiveServer, figures: Figures
) -> None:
    """A chunked upload never declares its size: the limit applies to the bytes as they arrive."""
    scenario = figures.scenario("bad-inputs")
    sent_bytes = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent_bytes
        yield b'{"pairs": [{"question": "q", "answer": "'
        for _ in range(64):  # up to 4 MiB, 16x the limit
            sent_bytes += 65536
            yield b"a" * 65536
        yield b'"}]}'

    scenario.inputs += 1
    scenario.sent += 1
    with httpx.Client(timeout=30) as client:
        try:
            response = client.post(f"{server.url}/score", content=endless(), headers=JSON)
        except (httpx.WriteError, httpx.RemoteProtocolError):
            pytest.fail("the server closed the connection without answering 413")
    assert "content-length" not in {k.lower() for k in response.request.headers}
    _assert_error(response, 413)
    assert response.json()["error"]["type"] == "payload_too_large"
    # a small chunked body is fine
    scenario.sent += 1
    ok = httpx.post(f"{server.url}/score", content=iter([b'{"pairs": [', b'{"question": "q", "answer": "a"}]}']),
                    headers=JSON)  # fmt: skip
    assert ok.status_code == 200
    scenario.assert_nothing_lost("chunked")


@pytest.mark.parametrize(
    "pairs",
    [
        [{"question": "", "answer": ""}],
        [{"question": "How?", "answer": ""}],
        [{"question": "", "answer": "Like this."}],
        [{"question": " \n\t ", "answer": "\u200b"}],
    ],
)
def test_empty_strings_get_a_finite_score(server: LiveServer, figures: Figures, pairs: list[dict]) -> None:
    scenario = figures.scenario("bad-inputs")
    scenario.inputs += 1
    scenario.sent += 1
    response = httpx.post(f"{server.url}/score", json={"pairs": pairs}, timeout=30)
    assert response.status_code == 200, response.text
    assert all(math.isfinite(s) for s in response.json()["scores"])
    groups = httpx.post(
        f"{server.url}/score/groups", json={"groups": [{"question": "", "answers": ["", "x"]}]}, timeout=30
    )
    rewards = httpx.post(f"{server.url}/get_reward", json={"query": [""], "prompts": [""]}, timeout=30)
    classify = httpx.post(f"{server.url}/classify", json={"input": "", "activation": False}, timeout=30)
    embedding = httpx.post(f"{server.url}/v1/embeddings", json={"input": [""]}, timeout=30)
    slime = httpx.post(f"{server.url}/slime/reward", json={"prompt": "", "response": ""}, timeout=30)
    scenario.sent += 5
    assert groups.status_code == 200 and all(math.isfinite(s) for s in groups.json()["groups"][0]["scores"])
    assert rewards.status_code == 200 and math.isfinite(rewards.json()["rewards"][0])
    assert classify.status_code == 200 and math.isfinite(classify.json()["data"][0]["probs"][-1])
    assert embedding.status_code == 200 and math.isfinite(embedding.json()["data"][0]["embedding"][-1])
    assert slime.status_code == 200 and math.isfinite(slime.json())


@pytest.mark.parametrize(("method", "path", "status"), [("POST", "/nope", 404), ("GET", "/score", 405)])
def test_unknown_route_and_wrong_method_answer_in_the_error_format(
    server: LiveServer, figures: Figures, method: str, path: str, status: int
) -> None:
    scenario = figures.scenario("bad-inputs")
    scenario.inputs += 1
    scenario.sent += 1
    _assert_error(httpx.request(method, f"{server.url}{path}", json={"pairs": [PAIR]}, timeout=30), status)
