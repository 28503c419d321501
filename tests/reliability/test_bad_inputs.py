"""Bad inputs against a real server: each gets a clear 4xx with a JSON error body, and the server keeps
serving. Empty strings are not bad input (a policy may answer nothing): they get a finite score.
Conversations that break a rule (empty, no final answer, an unknown role, non-string content, a
template that will not render them) are refused with a 422 naming the item, and cost no other request.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.reliability.figures import Figures
from tests.service.chat_bundles import make_chat_bundle
from tests.service.chat_helpers import STRICT
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


def _refused(server: LiveServer, figures: Figures, label: str, status: int, url: str, **request: Any) -> str:
    """POST one bad request, counted in the bad-inputs figures (a 5xx is a lost input): it must get
    ``status`` with the service's JSON error, and the server must score after it. Returns the message."""
    scenario = figures.scenario("bad-inputs")
    scenario.inputs += 1
    scenario.sent += 2
    response = httpx.post(url, timeout=30, **request)
    if response.status_code >= 500:
        scenario.lost += 1
    _assert_error(response, status)
    _still_serving(server.url)
    scenario.assert_nothing_lost(label)
    return str(response.json()["error"]["message"])


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
    body, status = ROUTE_CASES[route][name]
    _refused(server, figures, f"{route}: {name}", status, f"{server.url}{route}", content=body, headers=JSON)


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


# ---- conversations: the rules of a conversation, broken (issue 14) --------------------------------------
ASSISTANT = b'{"role": "assistant", "content": "Hello."}'
USER = b'{"role": "user", "content": "Hi?"}'
CHATML_TOOL = b'"<|im_start|>tool\\n{}<|im_end|>\\n<|im_start|>assistant\\nok<|im_end|>"'
CHATML_NO_ANSWER = b'"<|im_start|>user\\nHi?<|im_end|>\\n"'
# route -> name -> (raw body, expected status, what the message must name)
CONVERSATION_CASES: dict[str, dict[str, tuple[bytes, int, str]]] = {
    "/score": {
        "empty conversation": (b'{"pairs": [{"messages": []}]}', 422, "pairs[0].messages: the conversation is empty"),
        "last message not from the assistant": (
            b'{"pairs": [{"messages": [' + ASSISTANT + b", " + USER + b"]}]}", 422, "must be the assistant answer"),
        "unknown role": (b'{"pairs": [{"messages": [{"role": "tool", "content": "{}"}, ' + ASSISTANT + b"]}]}",
                         422, "unknown role 'tool'"),
        "number as content": (b'{"pairs": [{"messages": [{"role": "assistant", "content": 7}]}]}', 422, "content"),
        "null content": (b'{"pairs": [{"messages": [{"role": "assistant", "content": null}]}]}', 422, "content"),
        "content parts instead of text": (
            b'{"pairs": [{"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}]}',
            422, "content"),
        "role is a number": (b'{"pairs": [{"messages": [{"role": 1, "content": "a"}]}]}', 422, "role"),
        "message without content": (b'{"pairs": [{"messages": [{"role": "assistant"}]}]}', 422, "content"),
        "system message not first": (
            b'{"pairs": [{"messages": [' + USER + b', {"role": "system", "content": "x"}, ' + ASSISTANT + b"]}]}",
            422, "only come first"),
        "messages is a string": (b'{"pairs": [{"messages": "Hi?"}]}', 422, "messages"),
        "a message is a string": (b'{"pairs": [{"messages": ["Hello."]}]}', 422, "messages"),
        "lone surrogate in a message": (
            b'{"pairs": [{"messages": [{"role": "assistant", "content": "\\udc00"}]}]}', 422, "messages[0].content"),
        "100k-character message": (
            b'{"pairs": [{"messages": [{"role": "assistant", "content": ' + LONG + b"}]}]}", 413, "messages[0].content"),
        "100k-character role": (b'{"pairs": [{"messages": [{"role": ' + LONG + b', "content": "a"}]}]}', 422,
                                "unknown role"),
    },
    "/score/groups": {
        "unknown role in the conversation": (
            b'{"groups": [{"messages": [{"role": "tool", "content": "{}"}], "answers": ["a"]}]}', 422,
            "groups[0].answers[0]: message 0: unknown role 'tool'"),
        "no answers": (b'{"groups": [{"messages": [' + USER + b'], "answers": []}]}', 422, "answers"),
        "number as content": (b'{"groups": [{"messages": [{"role": "user", "content": 1}], "answers": ["a"]}]}',
                              422, "content"),
    },
    "/get_reward": {
        "templated text with an unknown role": (b'{"query": [' + CHATML_TOOL + b"]}", 422,
                                                "query[0]: message 0: unknown role 'tool'"),
        "templated text without an answer": (b'{"query": [' + CHATML_NO_ANSWER + b"]}", 422,
                                             "query[0]: the last message"),
    },
    "/classify": {
        "templated text with an unknown role": (b'{"input": ' + CHATML_TOOL + b"}", 422, "input[0]: message 0"),
    },
    "/slime/reward": {
        "templated prompt with an unknown role": (
            b'{"prompt": "<|im_start|>tool\\n{}<|im_end|>\\n<|im_start|>assistant\\n", "response": "ok"}', 422,
            "prompt: message 0: unknown role 'tool'"),
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("route", "name"), [(route, name) for route, cases in CONVERSATION_CASES.items() for name in cases]
)
def test_a_broken_conversation_is_a_clear_error_naming_it(
    server: LiveServer, figures: Figures, route: str, name: str
) -> None:
    body, status, names = CONVERSATION_CASES[route][name]
    url = f"{server.url}{route}"
    message = _refused(server, figures, f"{route}: {name}", status, url, content=body, headers=JSON)
    assert names in message, message


# a chat bundle whose template refuses what it cannot render (Mistral-style strict alternation)
GOOD = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
UNRENDERABLE = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    bundle = make_chat_bundle(
        tmp_path_factory.mktemp("strict") / "rm", STRICT, {"bos_token": "[CLS]", "eos_token": "[SEP]"}
    )
    with LiveServer(create_app(settings_for(bundle, max_pairs_per_request=MAX_PAIRS))) as live:
        yield live


def test_a_conversation_the_template_cannot_render_is_a_422_and_costs_nobody_else(
    strict_server: LiveServer, figures: Figures
) -> None:
    """Good requests in flight beside the refused ones all get their own finite scores; a request
    mixing good and unrenderable items is refused whole, naming the item, and its good item scores
    the same afterwards."""
    scenario = figures.scenario("bad-inputs")
    url = strict_server.url
    alone = httpx.post(f"{url}/score", json={"pairs": [{"messages": GOOD}]}, timeout=30).json()["scores"][0]
    bodies = [
        {"pairs": [{"messages": GOOD}]},
        {"pairs": [{"messages": GOOD}, {"messages": UNRENDERABLE}]},
    ] * 12
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        results[i] = httpx.post(f"{url}/score", json=bodies[i], timeout=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scenario.inputs += 1
    scenario.sent += len(bodies) + 1
    for i, response in results.items():
        if response.status_code >= 500:
            scenario.lost += 1
        if i % 2 == 0:  # the good ones: their own score, as alone
            assert response.status_code == 200, response.text
            assert response.json()["scores"][0] == pytest.approx(alone, abs=1e-4)
        else:
            _assert_error(response, 422)
            message = response.json()["error"]["message"]
            assert (
                message.startswith("pairs[1].messages: the chat template refused") and "alternate" in message
            )
    groups = httpx.post(
        f"{url}/score/groups", json={"groups": [{"messages": [], "answers": ["a"]}]}, timeout=30
    )
    _assert_error(groups, 422)  # a lone assistant message: this template wants a user first
    assert "groups[0].answers[0]" in groups.json()["error"]["message"]
    scenario.sent += 1
    after = httpx.post(f"{url}/score", json={"pairs": [{"messages": GOOD}]}, timeout=30)
    assert after.status_code == 200 and after.json()["scores"][0] == pytest.approx(alone, abs=1e-4)
    scenario.assert_nothing_lost("unrenderable conversation")


def test_a_pair_bundle_reads_conversations_as_hh_turns(server: LiveServer, figures: Figures) -> None:
    """Not bad input: the default (pair) bundle scores a conversation as the hh pair it was trained on."""
    scenario = figures.scenario("bad-inputs")
    scenario.sent += 2
    as_messages = httpx.post(f"{server.url}/score", json={"pairs": [{"messages": GOOD}]}, timeout=30)
    as_hh = httpx.post(f"{server.url}/score", json={"pairs": [{"question": "\n\nHuman: Hi?\n\nAssistant:",
                                                               "answer": " Hello."}]}, timeout=30)  # fmt: skip
    assert as_messages.status_code == 200 and as_hh.status_code == 200
    assert as_messages.json()["scores"] == pytest.approx(as_hh.json()["scores"], abs=1e-6)


# ---- ?uncertainty_penalty=λ on the trainer routes (issue 13 part 3, server side) -------------------------
# a good body per trainer route: only the query parameter is wrong
PENALTY_BODIES = {
    "/get_reward": {"query": ["\n\nHuman: Hi?\n\nAssistant: Hello."], "prompts": ["\n\nHuman: Hi?\n\nAssistant:"]},
    "/classify": {"input": "\n\nHuman: Hi?\n\nAssistant: Hello.", "activation": False},
    "/v1/embeddings": {"input": "\n\nHuman: Hi?\n\nAssistant: Hello."},
    "/slime/reward": {"prompt": "\n\nHuman: Hi?\n\nAssistant:", "response": " Hello."},
}  # fmt: skip
# name -> (the parameter's raw value, what the message must say)
PENALTY_CASES = {
    "negative": ("-1", "finite number >= 0"),
    "NaN": ("nan", "finite number >= 0"),
    "infinite": ("inf", "finite number >= 0"),
    "overflows to infinity": ("1e400", "finite number >= 0"),
    "not a number": ("lots", "uncertainty_penalty"),
    "empty": ("", "uncertainty_penalty"),
    "positive, but the bundle has no ensemble": ("0.5", "--quality-heads"),
}


@pytest.mark.parametrize("route", list(PENALTY_BODIES))
@pytest.mark.parametrize("name", list(PENALTY_CASES))
def test_a_bad_uncertainty_penalty_is_a_clear_422(
    server: LiveServer, figures: Figures, route: str, name: str
) -> None:
    """The default bundle has one quality head, so any λ > 0 is refused too (penalising nothing would
    silently train the plain reward)."""
    value, says = PENALTY_CASES[name]
    url = f"{server.url}{route}?uncertainty_penalty={value}"
    label = f"{route}: uncertainty_penalty {name}"
    assert says in _refused(server, figures, label, 422, url, json=PENALTY_BODIES[route])
