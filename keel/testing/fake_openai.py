"""A scriptable, fault-injecting OpenAI-compatible HTTP server for tests.

``FakeOpenAI`` is a *real* HTTP server bound to 127.0.0.1 that speaks the
OpenAI chat-completions wire protocol (``POST /v1/chat/completions`` and
``GET /v1/models``) and Anthropic's Messages API (``POST /v1/messages``, with
tool use for JSON output).  Each chat request consumes one scripted :class:`Step`
(FIFO); when the script is empty the server falls back to
:attr:`FakeOpenAI.default`.  Steps can return normal answers or inject faults:
429 with ``Retry-After``, 5xx/4xx errors, hangs, abrupt TCP resets, malformed
JSON, schema-violating content, empty content and slow SSE streams.

Only the standard library is used (``http.server.ThreadingHTTPServer`` in a
background thread), so slow/hanging requests never block other requests.

Usage in tests::

    with FakeOpenAI() as fake:
        fake.script(Step.rate_limited("2"), Step.ok("hello"))
        client = SomeOpenAIClient(base_url=fake.base_url, api_key="x")
        ...
        assert len(fake.requests) == 2

From the command line (serves forever, the fault is the default step)::

    python -m keel.testing.fake_openai --port 8099 --fault 429
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Fault", "Step", "FakeOpenAI", "main"]

ANSWER_MAX_WORDS = 30
FALLBACK_ANSWER = "fake answer"
SCHEMA_VIOLATION_CONTENT = {"answer": 42, "citations": ["NOT-A-SOURCE"]}


class Fault(enum.Enum):
    """What a :class:`Step` does with the request it handles."""

    OK = "ok"
    ANSWER = "answer"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    HANG = "hang"
    RESET = "reset"
    MALFORMED = "malformed"
    SCHEMA_VIOLATION = "schema_violation"
    EMPTY = "empty"
    SLOW_STREAM = "slow_stream"
    TOOL_CALLS = "tool_calls"
    STREAM_CUT = "stream_cut"


@dataclass(frozen=True)
class Step:
    """One scripted server behaviour. Build with the classmethod constructors."""

    kind: Fault
    content: str | None = None  # OK: the message content
    status: int = 200  # SERVER_ERROR / CLIENT_ERROR: HTTP status
    retry_after: str | None = None  # RATE_LIMITED: Retry-After header value (None = omit)
    seconds: float = 0.0  # HANG: sleep before answering; SLOW_STREAM: delay between chunks
    calls: tuple = ()  # TOOL_CALLS: ((name, arguments dict), ...)
    words: int = 0  # STREAM_CUT: words streamed before the connection drops

    @classmethod
    def ok(cls, content: str) -> "Step":
        """200 with a normal completion whose message content is ``content``."""
        return cls(Fault.OK, content=content)

    @classmethod
    def answer(cls) -> "Step":
        """200 with content satisfying the request's JSON schema (or "fake answer")."""
        return cls(Fault.ANSWER)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> "Step":
        """429 with ``Retry-After: <retry_after>`` (seconds or HTTP-date; None = no header)."""
        return cls(Fault.RATE_LIMITED, status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: int = 500) -> "Step":
        """5xx (typically 500/502/503) with an OpenAI error body."""
        if not 500 <= status <= 599:
            raise ValueError(f"server_error status must be 5xx, got {status}")
        return cls(Fault.SERVER_ERROR, status=status)

    @classmethod
    def client_error(cls, status: int = 400) -> "Step":
        """4xx (typically 400/401/403/404/422) with an OpenAI error body."""
        if not 400 <= status <= 499 or status == 429:
            raise ValueError(f"client_error status must be 4xx (not 429), got {status}")
        return cls(Fault.CLIENT_ERROR, status=status)

    @classmethod
    def hang(cls, seconds: float) -> "Step":
        """Sleep ``seconds`` (interrupted by ``stop()``), then answer like ``answer()``."""
        return cls(Fault.HANG, seconds=float(seconds))

    @classmethod
    def reset(cls) -> "Step":
        """Abort the TCP connection (SO_LINGER 0 -> RST) without sending any response."""
        return cls(Fault.RESET)

    @classmethod
    def malformed(cls) -> "Step":
        """200, ``Content-Type: application/json``, truncated/invalid JSON body."""
        return cls(Fault.MALFORMED)

    @classmethod
    def schema_violation(cls) -> "Step":
        """200, valid completion whose content is valid JSON violating the schema."""
        return cls(Fault.SCHEMA_VIOLATION)

    @classmethod
    def empty(cls) -> "Step":
        """200, valid completion whose message content is ``""``."""
        return cls(Fault.EMPTY)

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict]) -> "Step":
        """200 with the model calling tools: ``("name", {arguments})`` each, in one turn
        (OpenAI ``tool_calls``; Anthropic ``tool_use`` blocks)."""
        return cls(Fault.TOOL_CALLS, calls=tuple((name, dict(args)) for name, args in calls))

    @classmethod
    def stream_cut(cls, words: int = 3) -> "Step":
        """A streamed answer that stops after ``words`` words: the connection is reset (a
        request without ``stream`` is reset at once)."""
        return cls(Fault.STREAM_CUT, words=int(words))

    @classmethod
    def slow_stream(cls, delay: float) -> "Step":
        """SSE stream one word per chunk with ``delay`` s between (or delay, then answer)."""
        return cls(Fault.SLOW_STREAM, seconds=float(delay))


# --------------------------------------------------------------------------- helpers


def _message_text(message: Any) -> str:
    """Text of a chat message; supports string content and content-part lists."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def _messages(body: dict) -> list:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def _count_words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict) -> int:
    return sum(_count_words(_message_text(m)) for m in _messages(body))


def _last_user_text(body: dict) -> str:
    for message in reversed(_messages(body)):
        if isinstance(message, dict) and message.get("role") == "user":
            return _message_text(message)
    return ""


def _sources_or_last_user_text(body: dict) -> str:
    """The last user message showing sources (a repair re-ask answers from them too), else the
    last user message."""
    for message in reversed(_messages(body)):
        if isinstance(message, dict) and message.get("role") == "user" and re.search(r'\[S1\]|<source id="S\d+"', _message_text(message)):
            return _message_text(message)
    return _last_user_text(body)


def _request_schema(body: dict) -> dict | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    js = fmt.get("json_schema")
    if not isinstance(js, dict):
        return None
    schema = js.get("schema")
    return schema if isinstance(schema, dict) else None


class _SchemaFaker:
    """Builds a minimal instance satisfying a (subset of) JSON Schema."""

    def __init__(self, root: dict, answer_text: str) -> None:
        self.root = root
        self.answer_text = answer_text

    def _resolve(self, schema: Any, depth: int) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth < 32:
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return {}
            node: Any = self.root
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, dict) or part not in node:
                    return {}
                node = node[part]
            schema = node
            depth += 1
        return schema

    def make(self, schema: Any, name: str | None = None, depth: int = 0) -> Any:
        if depth > 32:
            return None
        schema = self._resolve(schema, depth)
        if not isinstance(schema, dict):
            return self.answer_text if name == "answer" else "fake"
        if "const" in schema:
            return schema["const"]
        enum_values = schema.get("enum")
        if isinstance(enum_values, list) and enum_values:
            return enum_values[0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.make((non_null or options)[0], name, depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict = {}
            for sub in all_of:
                sub = self._resolve(sub, depth)
                if isinstance(sub, dict):
                    merged.update(sub)
            return self.make(merged, name, depth + 1)

        typ = schema.get("type")
        if isinstance(typ, list):
            non_null = [t for t in typ if t != "null"]
            typ = non_null[0] if non_null else "null"
        if typ is None:
            if "properties" in schema:
                typ = "object"
            elif "items" in schema:
                typ = "array"
            else:
                typ = "string"

        if typ == "object":
            props = schema.get("properties") or {}
            return {key: self.make(sub, key, depth + 1) for key, sub in props.items()}
        if typ == "array":
            items = schema.get("items", {})
            count = max(1, int(schema.get("minItems", 1) or 1))
            max_items = schema.get("maxItems")
            if isinstance(max_items, int):
                count = min(count, max_items)
            return [self.make(items, None, depth + 1) for _ in range(count)]
        if typ == "integer":
            return int(schema.get("minimum", 0))
        if typ == "number":
            return schema.get("minimum", 0.0)
        if typ == "boolean":
            return True
        if typ == "null":
            return None
        # string
        text = self.answer_text if name == "answer" else "fake"
        min_len = schema.get("minLength")
        if isinstance(min_len, int) and len(text) < min_len:
            text = text + "x" * (min_len - len(text))
        max_len = schema.get("maxLength")
        if isinstance(max_len, int) and len(text) > max_len:
            text = text[:max_len]
        return text


def answer_content(body: dict) -> str:
    """Content produced by ``Step.answer()`` for a request body.

    With ``response_format={"type": "json_schema", "json_schema": {"schema": S}}``
    this is a JSON document satisfying ``S``: a property named ``answer`` gets the first 30 words
    of the last user message (of its first source, if it shows sources; its first passage for
    Keel's ``answer-v3``), enums get their first value (citations: the source answered from), arrays
    get one item.  For ``{"type": "json_object"}`` it is ``{"answer": "fake answer"}``;
    otherwise the plain text ``"fake answer"``.
    """
    schema = _request_schema(body)
    if schema is None:
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return json.dumps({"answer": FALLBACK_ANSWER})
        return FALLBACK_ANSWER
    return json.dumps(_grounded_value(body, schema))


def _grounded_value(body: dict, schema: dict) -> Any:
    """A value of ``schema`` whose answer comes from the first source, citing that source."""
    value = _SchemaFaker(schema, " ".join(_answer_words(body)) or FALLBACK_ANSWER).make(schema)
    shown = re.search(r'<source id="(S\d+)"', _sources_or_last_user_text(body))
    if isinstance(value, dict) and isinstance(value.get("citations"), list) and shown and shown.group(1) in json.dumps(schema):
        value["citations"] = [shown.group(1)]
    return value


def _answer_words(body: dict) -> list[str]:
    """What a grounded model answers: the first 30 words of its first source; when the sources
    are passages, best first (Keel's ``answer-v3``), the first passage."""
    source = _first_source(_sources_or_last_user_text(body))
    system = " ".join(_message_text(m) for m in _messages(body) if isinstance(m, dict) and m.get("role") == "system")
    if "passages from documents" in system:
        source = next((line for line in source.splitlines() if line.strip()), source)
    return source.split()[:ANSWER_MAX_WORDS]


def _first_source(text: str) -> str:
    """The text of the first source shown (``<source id="S3">``, or ``[S1] (file)``) when the
    message shows sources, so the fake answers from what it cites (the schema's first citation
    label is the first source shown), as a grounded model would; else the whole message."""
    match = re.search(r'<source id="S\d+"[^>]*>\n(.*?)\n</source>', text, re.S) or re.search(
        r"\[S1\][^\n]*\n(.*?)(?:\n\n\[S2\]|\n\nQuestion:|$)", text, re.S
    )
    return match.group(1) if match else text


_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(status: int, message: str | None = None) -> dict:
    """An OpenAI-style error envelope for ``status``."""
    if status in _ERROR_TYPES:
        err_type, code = _ERROR_TYPES[status]
    elif status >= 500:
        err_type, code = "server_error", None
    else:
        err_type, code = "invalid_request_error", None
    if message is None:
        message = f"Fake OpenAI injected HTTP {status} error."
        if status == 429:
            message = "Rate limit reached for requests (injected by FakeOpenAI)."
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int) -> dict:
    """An Anthropic-style error envelope for ``status``."""
    err_type = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": err_type, "message": f"Fake Anthropic injected HTTP {status} error."}}


def _forced_tool(body: dict) -> dict | None:
    """The tool an Anthropic request forces (``tool_choice: {"type": "tool"}``), if any."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if not isinstance(choice, dict) or choice.get("type") != "tool" or not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("name") == choice.get("name")), None)


def _answer_tool(body: dict) -> dict | None:
    """With tools of its own, an Anthropic request answers through Keel's ``keel_output`` tool."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    return next((t for t in tools if isinstance(t, dict) and t.get("name") == "keel_output"), None)


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for hung handlers on close
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], fake: "FakeOpenAI") -> None:
        self.fake = fake
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError, ValueError)):
            return  # client went away / connection was reset on purpose
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms stalls
    server: _Server

    def version_string(self) -> str:
        return "FakeOpenAI/1.0"

    # -- plumbing -------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def _send_bytes(self, status: int, payload: bytes, content_type: str = "application/json",
                    headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), headers=headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- routes ---------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        fake = self.server.fake
        try:
            if path in ("/v1/models", "/models"):
                self._send_json(200, {"object": "list", "data": [fake._model_card()]})
            elif path in (f"/v1/models/{fake.model}", f"/models/{fake.model}"):
                self._send_json(200, fake._model_card())
            else:
                self._send_json(404, error_body(404, f"Unknown path {self.path}"))
        except (ConnectionError, OSError):
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            raw = self._read_body()
            anthropic = path in ("/v1/messages", "/messages")
            if path not in ("/v1/chat/completions", "/chat/completions") and not anthropic:
                self._send_json(404, error_body(404, f"Unknown path {self.path}"))
                return
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._send_json(400, error_body(400, "Request body is not a JSON object."))
                return
            fake._record(body)
            step = fake._next_step(body)
            if anthropic:
                self._perform_anthropic(step, body)
            else:
                self._perform(step, body)
        except (ConnectionError, OSError):
            self.close_connection = True

    # -- steps ----------------------------------------------------------------
    def _perform(self, step: Step, body: dict) -> None:
        fake = self.server.fake
        kind = step.kind
        stream = body.get("stream") is True

        if kind is Fault.RESET:
            self._abort_connection()
            return
        if kind is Fault.RATE_LIMITED:
            headers = {"x-ratelimit-remaining-requests": "0"}
            if step.retry_after is not None:
                headers["Retry-After"] = step.retry_after
            self._send_json(429, error_body(429), headers=headers)
            return
        if kind in (Fault.SERVER_ERROR, Fault.CLIENT_ERROR):
            self._send_json(step.status, error_body(step.status))
            return
        if kind is Fault.STREAM_CUT:
            if stream:
                self._stream(body, answer_content(body), 0.0, cut_after=step.words)
            else:
                self._abort_connection()
            return
        if kind is Fault.TOOL_CALLS:
            reply = fake._completion(body, "")
            message = reply["choices"][0]["message"]
            message["content"] = None
            message["tool_calls"] = [
                {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for name, args in step.calls
            ]
            reply["choices"][0]["finish_reason"] = "tool_calls"
            self._send_json(200, reply)
            return
        if kind is Fault.MALFORMED:
            payload = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "trunc'
            self._send_bytes(200, payload)
            return
        if kind is Fault.HANG:
            if fake._sleep(step.seconds):
                self.close_connection = True
                return  # server stopping: give up silently
            content = answer_content(body)
        elif kind is Fault.OK:
            content = step.content or ""
        elif kind is Fault.EMPTY:
            content = ""
        elif kind is Fault.SCHEMA_VIOLATION:
            content = json.dumps(SCHEMA_VIOLATION_CONTENT)
        elif kind is Fault.SLOW_STREAM:
            content = answer_content(body)
            if not stream:
                if fake._sleep(step.seconds):
                    self.close_connection = True
                    return
        else:  # ANSWER
            content = answer_content(body)

        if stream:
            delay = step.seconds if kind is Fault.SLOW_STREAM else 0.0
            self._stream(body, content, delay)
        else:
            self._send_json(200, fake._completion(body, content))

    def _perform_anthropic(self, step: Step, body: dict) -> None:
        """The same steps in Anthropic's Messages dialect (errors, usage, tool-use output)."""
        fake = self.server.fake
        kind = step.kind
        if kind is Fault.RESET:
            self._abort_connection()
            return
        if kind is Fault.RATE_LIMITED:
            headers = {"anthropic-ratelimit-requests-remaining": "0"}
            if step.retry_after is not None:
                headers["Retry-After"] = step.retry_after
            self._send_json(429, anthropic_error_body(429), headers=headers)
            return
        if kind in (Fault.SERVER_ERROR, Fault.CLIENT_ERROR):
            self._send_json(step.status, anthropic_error_body(step.status))
            return
        if kind is Fault.MALFORMED:
            self._send_bytes(200, b'{"id": "msg_malformed", "type": "message", "content": [{"type": "te')
            return
        if kind in (Fault.HANG, Fault.SLOW_STREAM) and fake._sleep(step.seconds):
            self.close_connection = True
            return
        tool = _forced_tool(body) or _answer_tool(body)
        if kind is Fault.TOOL_CALLS:
            blocks = [
                {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": name, "input": args} for name, args in step.calls
            ]
            self._send_json(200, {
                "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
                "model": body.get("model") if isinstance(body.get("model"), str) else fake.model,
                "content": blocks, "stop_reason": "tool_use", "stop_sequence": None,
                "usage": {"input_tokens": _prompt_tokens(body), "output_tokens": 10 * len(blocks)},
            })
            return
        if kind is Fault.OK:
            content: Any = step.content or ""
        elif kind is Fault.EMPTY:
            content = ""
        elif kind is Fault.SCHEMA_VIOLATION:
            content = dict(SCHEMA_VIOLATION_CONTENT)
        elif tool is not None:  # ANSWER, HANG, SLOW_STREAM
            content = _grounded_value(body, tool.get("input_schema") or {})
        else:
            content = FALLBACK_ANSWER
        if isinstance(content, str) and tool is not None:
            try:
                parsed = json.loads(content)
                content = parsed if isinstance(parsed, dict) else content
            except ValueError:
                pass
        if isinstance(content, dict) and tool is not None:
            block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": tool["name"], "input": content}
            text = json.dumps(content)
        else:
            text = content if isinstance(content, str) else json.dumps(content)
            block = {"type": "text", "text": text}
        prompt = _count_words(body.get("system") if isinstance(body.get("system"), str) else "") + _prompt_tokens(body)
        self._send_json(200, {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": body.get("model") if isinstance(body.get("model"), str) else fake.model,
            "content": [block],
            "stop_reason": "tool_use" if block["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": _count_words(text)},
        })

    def _abort_connection(self) -> None:
        """Send a TCP RST: SO_LINGER(on, 0) then close the socket, no response."""
        conn = self.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        # rfile (makefile) holds a reference on the socket; drop it so close() is real.
        try:
            self.rfile.close()
        except OSError:
            pass
        try:
            conn.close()
        except OSError:
            pass

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, body: dict, content: str, delay: float, cut_after: int | None = None) -> None:
        fake = self.server.fake
        model = body.get("model") if isinstance(body.get("model"), str) else fake.model
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())

        def chunk(delta: dict, finish: str | None) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n"

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex)
        self.end_headers()
        self.wfile.flush()

        self._write_chunk(chunk({"role": "assistant", "content": ""}, None))
        words = content.split(" ") if content else []
        for i, word in enumerate(words):
            if cut_after is not None and i >= cut_after:
                self._abort_connection()
                return
            if delay > 0 and fake._sleep(delay):
                self.close_connection = True
                return  # server stopping: abandon the stream
            piece = word if i == 0 else " " + word
            self._write_chunk(chunk({"content": piece}, None))
        self._write_chunk(chunk({}, "stop"))
        if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
            usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": len(words)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}
            self._write_chunk(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeOpenAI:
    """Scriptable OpenAI-compatible server on 127.0.0.1 (port 0 = pick a free port).

    * ``script(*steps)`` appends steps to a FIFO queue; each chat request
      consumes one step. When the queue is empty, ``default`` is used
      (initially ``Step.answer()``).
    * ``requests`` holds every received chat request body (parsed JSON), in order.
    """

    def __init__(self, port: int = 0, model: str = "fake-model", *, verbose: bool = False) -> None:
        self.port = port
        self.model = model
        self.verbose = verbose
        self.default: Step = Step.answer()
        # When the script is empty: a function of the request body (e.g. "call the tool again
        # until the conversation holds N results"), so retried requests stay in step.
        self.responder: Callable[[dict], Step] | None = None
        self.requests: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request, same order
        self._queue: deque[Step] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeOpenAI:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wake hanging / slow-streaming handlers
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:  # unblock keep-alive handler threads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Start (if needed) and block until KeyboardInterrupt, then stop."""
        self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- public API -----------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *steps: Step) -> None:
        """Append ``steps`` to the FIFO queue (one consumed per chat request)."""
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"expected Step, got {type(step).__name__}")
        with self._lock:
            self._queue.extend(steps)

    def clear(self) -> None:
        """Forget unconsumed scripted steps and recorded requests (between tests)."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.arrivals.clear()
            self.responder = None

    @property
    def pending(self) -> int:
        """Number of scripted steps not yet consumed."""
        with self._lock:
            return len(self._queue)

    # -- internals used by the handler ---------------------------------------
    def _record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self.arrivals.append(time.monotonic())

    def _next_step(self, body: dict) -> Step:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self.responder
        return responder(body) if responder is not None else self.default

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if interrupted because the server is stopping."""
        return self._stopping.wait(max(0.0, seconds))

    def _model_card(self) -> dict:
        return {"id": self.model, "object": "model", "created": 1700000000, "owned_by": "keel-fake"}

    def _completion(self, body: dict, content: str) -> dict:
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = _count_words(content)
        model = body.get("model") if isinstance(body.get("model"), str) else self.model
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


# --------------------------------------------------------------------------- CLI

_CLI_FAULTS = {
    "ok": lambda a: Step.answer(),
    "429": lambda a: Step.rate_limited(a.retry_after),
    "500": lambda a: Step.server_error(500),
    "502": lambda a: Step.server_error(502),
    "503": lambda a: Step.server_error(503),
    "529": lambda a: Step.server_error(529),  # Anthropic's "overloaded"
    "400": lambda a: Step.client_error(400),
    "401": lambda a: Step.client_error(401),
    "hang": lambda a: Step.hang(a.hang_seconds),
    "reset": lambda a: Step.reset(),
    "malformed": lambda a: Step.malformed(),
    "schema": lambda a: Step.schema_violation(),
    "empty": lambda a: Step.empty(),
    "stream": lambda a: Step.slow_stream(a.stream_delay),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keel.testing.fake_openai",
        description="Serve a fault-injecting OpenAI-compatible API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8099, help="port (0 = any free port)")
    parser.add_argument("--model", default="fake-model", help="model id reported by /v1/models")
    parser.add_argument("--fault", choices=sorted(_CLI_FAULTS), default="ok",
                        help="default step applied to every chat request")
    parser.add_argument("--retry-after", default="1", help="Retry-After value for --fault 429")
    parser.add_argument("--hang-seconds", type=float, default=300.0, help="sleep for --fault hang")
    parser.add_argument("--stream-delay", type=float, default=0.5, help="per-chunk delay for --fault stream")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    fake = FakeOpenAI(port=args.port, model=args.model, verbose=args.verbose)
    fake.default = _CLI_FAULTS[args.fault](args)
    fake.start()
    print(f"FakeOpenAI: model={fake.model} fault={args.fault} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    print(fake.base_url, flush=True)  # stdout carries only the base URL, for scripts
    fake.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
