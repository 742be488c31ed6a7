"""Tests for keel.testing.fake_openai: a real loopback OpenAI-compatible fault server."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from keel.testing.fake_openai import FakeOpenAI, Fault, Step

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "citations": {"type": "array", "items": {"type": "string", "enum": ["doc-1#0", "doc-2#3"]}},
    },
    "required": ["answer", "citations"],
    "additionalProperties": False,
}

QUESTION = " ".join(f"w{i}" for i in range(40))  # 40 words; answer keeps the first 30


def chat_body(question: str = "hello there", schema: dict | None = None, stream: bool = False) -> dict:
    body: dict = {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "You answer from sources."},
            {"role": "user", "content": question},
        ],
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": schema},
        }
    if stream:
        body["stream"] = True
    return body


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.base_url, timeout=5.0) as c:
        yield c


def post(client: httpx.Client, body: dict | None = None, **kw) -> httpx.Response:
    return client.post("/chat/completions", json=body or chat_body(), **kw)


def assert_completion(data: dict) -> str:
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "fake-model"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return choice["message"]["content"]


def test_base_url_and_models(fake, client):
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/v1")
    assert fake.port > 0
    r = client.get("/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    assert data["data"][0]["id"] == "fake-model"
    assert client.get("/nope").status_code == 404


def test_ok_step_and_usage(fake, client):
    fake.script(Step.ok("one two three"))
    r = post(client, chat_body("hello there"))
    assert r.status_code == 200
    data = r.json()
    assert assert_completion(data) == "one two three"
    # prompt = "You answer from sources." (4) + "hello there" (2)
    assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


def test_answer_satisfies_schema(client):
    r = post(client, chat_body(QUESTION, schema=SCHEMA))
    assert r.status_code == 200
    content = json.loads(assert_completion(r.json()))
    assert content == {"answer": " ".join(QUESTION.split()[:30]), "citations": ["doc-1#0"]}


def test_answer_without_schema_is_plain_text(client):
    r = post(client, chat_body("anything"))
    assert assert_completion(r.json()) == "fake answer"


def test_answer_resolves_refs_and_nested_types(fake, client):
    schema = {
        "type": "object",
        "$defs": {"Cite": {"type": "string", "enum": ["s1", "s2"]}},
        "properties": {
            "answer": {"type": "string"},
            "citations": {"type": "array", "items": {"$ref": "#/$defs/Cite"}},
            "confidence": {"type": "number"},
            "grounded": {"type": "boolean"},
        },
    }
    fake.script(Step.answer())
    content = json.loads(assert_completion(post(client, chat_body("why is sky blue", schema)).json()))
    assert content == {"answer": "why is sky blue", "citations": ["s1"], "confidence": 0.0, "grounded": True}


def test_rate_limited_with_retry_after(fake, client):
    fake.script(Step.rate_limited("7"), Step.rate_limited("Wed, 21 Oct 2015 07:28:00 GMT"),
                Step.rate_limited(None))
    r = post(client)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error"
    assert err["code"] == "rate_limit_exceeded"
    assert err["message"]
    r = post(client)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    r = post(client)
    assert r.status_code == 429
    assert "Retry-After" not in r.headers


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error(fake, client, status):
    fake.script(Step.server_error(status))
    r = post(client)
    assert r.status_code == status
    assert r.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_error(fake, client, status):
    fake.script(Step.client_error(status))
    r = post(client)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"]


def test_invalid_status_rejected():
    with pytest.raises(ValueError):
        Step.server_error(404)
    with pytest.raises(ValueError):
        Step.client_error(503)


def test_hang_triggers_read_timeout_without_blocking_others(fake):
    fake.script(Step.hang(3.0))
    with httpx.Client(base_url=fake.base_url, timeout=0.3) as slow:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(slow)
        assert time.monotonic() - t0 < 2.0
    # A concurrent request is answered while the first handler is still sleeping.
    with httpx.Client(base_url=fake.base_url, timeout=2.0) as other:
        t0 = time.monotonic()
        r = post(other)
        assert r.status_code == 200
        assert time.monotonic() - t0 < 1.0


def test_short_hang_then_answers(fake, client):
    fake.script(Step.hang(0.2))
    t0 = time.monotonic()
    r = post(client)
    assert time.monotonic() - t0 >= 0.2
    assert r.status_code == 200
    assert assert_completion(r.json()) == "fake answer"


def test_reset_closes_connection_abruptly(fake, client):
    fake.script(Step.reset())
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(client)
    assert len(fake.requests) == 1  # request was received and recorded before the reset
    # The server stays healthy afterwards.
    assert post(client).status_code == 200


def test_malformed_json(fake, client):
    fake.script(Step.malformed())
    r = post(client)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)


def test_schema_violation(fake, client):
    fake.script(Step.schema_violation())
    r = post(client, chat_body("q", schema=SCHEMA))
    assert r.status_code == 200
    content = json.loads(assert_completion(r.json()))  # valid JSON ...
    assert not isinstance(content["answer"], str)  # ... but violates the schema
    assert content["citations"][0] not in SCHEMA["properties"]["citations"]["items"]["enum"]


def test_empty_content(fake, client):
    fake.script(Step.empty())
    r = post(client)
    assert r.status_code == 200
    data = r.json()
    assert assert_completion(data) == ""
    assert data["usage"]["completion_tokens"] == 0


def test_slow_stream_sends_sse_chunks(fake, client):
    fake.script(Step.slow_stream(0.05))
    arrivals: list[float] = []
    payloads: list[str] = []
    t0 = time.monotonic()
    with client.stream("POST", "/chat/completions", json=chat_body("alpha beta gamma delta", SCHEMA, stream=True)) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[len("data: "):])
                arrivals.append(time.monotonic() - t0)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert json.loads(text) == {"answer": "alpha beta gamma delta", "citations": ["doc-1#0"]}
    word_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(word_chunks) == len(text.split(" ")) > 1  # one word per chunk
    assert arrivals[-1] - arrivals[0] >= 0.05 * (len(word_chunks) - 1)  # really paced


def test_slow_stream_non_streaming_delays_then_answers(fake, client):
    fake.script(Step.slow_stream(0.2))
    t0 = time.monotonic()
    r = post(client)
    assert time.monotonic() - t0 >= 0.2
    assert assert_completion(r.json()) == "fake answer"


def test_requests_recorded_in_order(fake, client):
    post(client, chat_body("first"))
    post(client, chat_body("second", schema=SCHEMA))
    assert [m["messages"][-1]["content"] for m in fake.requests] == ["first", "second"]
    assert fake.requests[1]["response_format"]["type"] == "json_schema"


def test_script_is_fifo_then_falls_back_to_default(fake, client):
    fake.script(Step.rate_limited(), Step.server_error(503))
    fake.script(Step.ok("third"))
    assert fake.pending == 3
    statuses = [post(client).status_code for _ in range(3)]
    assert statuses == [429, 503, 200]
    assert fake.pending == 0
    assert assert_completion(post(client).json()) == "fake answer"  # default Step.answer()
    fake.default = Step.client_error(401)
    assert post(client).status_code == 401
    assert post(client).status_code == 401
    assert len(fake.requests) == 6


def test_step_is_frozen_and_typed():
    step = Step.rate_limited("3")
    assert step.kind is Fault.RATE_LIMITED
    with pytest.raises(Exception):
        step.retry_after = "4"  # type: ignore[misc]
    assert Step.hang(1).kind is Fault.HANG
    assert Step.reset().kind is Fault.RESET
