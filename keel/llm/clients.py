"""LLM clients over ``httpx`` that classify every failure: OpenAI-compatible chat completions
(OpenAI, Azure OpenAI's v1 endpoint, vLLM, Ollama, llama.cpp's server) and Anthropic Messages.

Each call makes exactly one HTTP request and never retries: the activity's Temporal retry
policy does that, reading the classification from :mod:`keel.errors` (and the server's
``Retry-After`` through ``LLMRateLimited.retry_after``). A failed call carries the tokens it
may have been billed for (see :class:`keel.errors.LLMError`), so retries are never free in
Keel's accounting.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel.errors import LLMBadOutput, LLMError, LLMRateLimited, LLMRequestRejected, LLMUnavailable


class ResponseFormat(str, enum.Enum):
    """How to ask an OpenAI-compatible server for schema-constrained JSON output."""

    JSON_SCHEMA = "json_schema"  # OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's own server
    JSON_OBJECT = "json_object"  # llama-cpp-python's server: {"type": "json_object", "schema": ...}

    def request_field(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self is ResponseFormat.JSON_OBJECT:
            return {"type": "json_object", "schema": schema}
        strict = strict_compatible(schema)
        return {"type": "json_schema", "json_schema": {"name": "keel_output", "schema": schema, "strict": strict}}


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict structured outputs accept ``schema``: every object closed
    (``additionalProperties: false``) with all its properties required. A pydantic model's plain
    schema often is not (optional fields, open objects): then it is sent non-strict, and Keel's
    own validation (with a repair re-ask) enforces it.

    >>> strict_compatible({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
    ...                    "additionalProperties": False})
    True
    >>> strict_compatible({"type": "object", "properties": {"a": {"type": "string"}}})
    False
    """
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
                return False
        return all(strict_compatible(v) for v in schema.values())
    if isinstance(schema, list):
        return all(strict_compatible(v) for v in schema)
    return True


@dataclass
class Completion:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    # Tool calls the model asked for, provider-neutral: {"id", "name", "arguments" (JSON text)}.
    tool_calls: list[dict[str, str]] = field(default_factory=list)


# Conversations are provider-neutral lists of dicts: {"role": "system"|"user"|"assistant",
# "content"}, an assistant turn may carry "tool_calls" [{"id", "name", "arguments"}], and a tool's
# answer is {"role": "tool", "tool_call_id", "name", "content"}. Tools are {"name",
# "description", "parameters" (JSON schema)}. Each client speaks its provider's wire format.


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    if m["role"] == "tool":
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]]
        return {"role": "assistant", "content": m.get("content") or None, "tool_calls": calls}
    return {"role": m["role"], "content": m.get("content") or ""}


def _anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m.get("content") or ""}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)  # the answers to one turn's calls travel together
            else:
                out.append({"role": "user", "content": [block]})
        elif m.get("tool_calls"):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            for c in m["tool_calls"]:
                blocks.append({"type": "tool_use", "id": c["id"], "name": c["name"], "input": _arguments(c["arguments"])})
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A provider-independent estimate of a prompt's tokens: about four characters each."""
    return math.ceil(sum(len(m.get("content") or "") for m in messages) / 4) + 4 * len(messages)


class _HTTPClient:
    """One request, a deadline for the whole of it, transport failures classified."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str], prompt_estimate: int) -> httpx.Response:
        # httpx's timeout bounds each read, not the request: a server that drips one byte per
        # second would never time out. asyncio.timeout bounds the whole exchange.
        try:
            async with asyncio.timeout(self.timeout):
                return await _shared_client(self.timeout).post(url, json=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException) as e:
            sent = not isinstance(e, (httpx.ConnectTimeout, httpx.PoolTimeout))
            raise LLMUnavailable(
                f"LLM request timed out after {self.timeout}s ({type(e).__name__})", **_maybe_billed(sent, prompt_estimate)
            ) from None
        except httpx.TransportError as e:
            sent = not isinstance(e, httpx.ConnectError)
            raise LLMUnavailable(
                f"LLM connection failed: {type(e).__name__}: {e}", **_maybe_billed(sent, prompt_estimate)
            ) from None

    @staticmethod
    def _raise_for_status(response: httpx.Response, error_text: str) -> None:
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise LLMRateLimited(f"LLM rate limited (429): {error_text}", retry_after=retry_after)
        if status >= 500:  # includes Anthropic's 529 "overloaded"
            raise LLMUnavailable(f"LLM server error {status}: {error_text}")
        if status >= 400:
            raise LLMRequestRejected(f"LLM rejected the request ({status}): {error_text}")


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, httpx.AsyncClient]] = weakref.WeakKeyDictionary()


def _shared_client(timeout: float) -> httpx.AsyncClient:
    """One ``httpx.AsyncClient`` per event loop and timeout: building one costs ~50 ms here (its
    SSL context), more than a local model's reply. Connections are not kept alive, so a provider
    that drops idle connections never fails the next request: only the client is reused."""
    per_loop = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(timeout)
    if client is None or client.is_closed:
        client = per_loop[timeout] = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))
    return client


def _maybe_billed(sent: bool, prompt_estimate: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_estimate, "usage_estimated": True} if sent else {}


class ChatClient(_HTTPClient):
    """One OpenAI-compatible chat-completions endpoint.

    :param base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8088/v1``.
    :param api_key: sent as a bearer token when set.
    :param model: the model name the endpoint expects.
    :param timeout: seconds for the whole request.
    :param response_format: the endpoint's dialect for JSON-schema output.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        response_format: ResponseFormat = ResponseFormat.JSON_SCHEMA,
    ) -> None:
        super().__init__(base_url, model, api_key=api_key, timeout=timeout)
        self.response_format = response_format

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        tools: list[dict[str, Any]] | None = None,
        on_delta: Callable[[str], Awaitable[None]] | None = None,
    ) -> Completion:
        """One chat completion; with ``on_delta`` it is streamed (server-sent events) and each
        piece of content is passed to ``on_delta`` as it arrives."""
        body: dict[str, Any] = {
            "model": self.model, "messages": [_openai_message(m) for m in messages], "max_tokens": max_tokens, "temperature": 0,
        }
        if json_schema is not None:
            body["response_format"] = self.response_format.request_field(json_schema)
        if tools:
            body["tools"] = [{"type": "function", "function": t} for t in tools]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        estimate = estimate_tokens(messages)
        if on_delta is not None:
            body["stream"], body["stream_options"] = True, {"include_usage": True}
            return await self._stream(f"{self.base_url}/chat/completions", body, headers, estimate, on_delta)
        response = await self._post(f"{self.base_url}/chat/completions", body, headers, estimate)
        return self._parse(response, estimate)

    async def _stream(
        self, url: str, body: dict[str, Any], headers: dict[str, str], estimate: int, on_delta: Callable[[str], Awaitable[None]]
    ) -> Completion:
        parts: list[str] = []
        usage: dict[str, Any] = {}
        model = self.model
        try:
            async with asyncio.timeout(self.timeout):
                async with _shared_client(self.timeout).stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        self._raise_for_status(response, _error_text(response))
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        model = chunk.get("model") or model
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                parts.append(piece)
                                await on_delta(piece)
        except (TimeoutError, httpx.TimeoutException) as e:
            raise LLMUnavailable(f"LLM stream timed out after {self.timeout}s ({type(e).__name__})", **_maybe_billed(True, estimate)) from None
        except httpx.TransportError as e:
            sent = not isinstance(e, httpx.ConnectError)
            raise LLMUnavailable(
                f"LLM stream broke after {len(parts)} pieces: {type(e).__name__}: {e}", **_maybe_billed(sent, estimate)
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LLMBadOutput(f"malformed stream: {type(e).__name__}: {e}", prompt_tokens=estimate, usage_estimated=True) from None
        content = "".join(parts)
        return Completion(
            content=content,
            model=model,
            prompt_tokens=int(usage.get("prompt_tokens") or estimate),
            completion_tokens=int(usage.get("completion_tokens") or len(content) // 4),
        )

    def _parse(self, response: httpx.Response, prompt_estimate: int) -> Completion:
        self._raise_for_status(response, _error_text(response))
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            content = message["content"] or ""
            calls = [
                {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"].get("arguments") or "{}"}
                for c in message.get("tool_calls") or []
            ]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _unreadable(e, response, prompt_estimate) from None
        usage = data.get("usage") or {}
        return Completion(
            content=content,
            model=data.get("model") or self.model,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            tool_calls=calls,
        )


class AnthropicClient(_HTTPClient):
    """Anthropic's Messages API (``POST {base_url}/v1/messages``).

    The system prompt travels in its own field; JSON output is requested as a forced tool call
    whose ``input_schema`` is the answer schema, and the tool input becomes the reply content.
    429 honours ``Retry-After``; 529 (overloaded) is an outage like any 5xx.

    :param base_url: e.g. ``https://api.anthropic.com`` (a trailing ``/v1`` is accepted).
    :param api_key: sent as ``x-api-key``.
    :param version: the ``anthropic-version`` header.
    """

    TOOL = "keel_output"

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0, version: str = "2023-06-01"
    ) -> None:
        super().__init__(base_url.removesuffix("/v1").rstrip("/"), model, api_key=api_key, timeout=timeout)
        self.version = version

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": _anthropic_messages(messages),
        }
        if system:
            body["system"] = system
        wire_tools = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in tools or []]
        if json_schema is not None:
            # The final answer is a call of this tool; with other tools the model must call one.
            wire_tools.append({"name": self.TOOL, "description": "Reply with the final answer.", "input_schema": json_schema})
            body["tool_choice"] = {"type": "any"} if tools else {"type": "tool", "name": self.TOOL}
        if wire_tools:
            body["tools"] = wire_tools
        headers = {"anthropic-version": self.version}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        estimate = estimate_tokens(messages)
        response = await self._post(f"{self.base_url}/v1/messages", body, headers, estimate)
        self._raise_for_status(response, _error_text(response))
        try:
            data = response.json()
            blocks = data["content"]
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            answers = [b["input"] for b in uses if b["name"] == self.TOOL]
            calls = [{"id": b["id"], "name": b["name"], "arguments": json.dumps(b["input"])} for b in uses if b["name"] != self.TOOL]
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            content = json.dumps(answers[0]) if answers else text
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _unreadable(e, response, estimate) from None
        usage = data.get("usage") or {}
        return Completion(
            content=content,
            model=data.get("model") or self.model,
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            tool_calls=[] if answers else calls,
        )


def _unreadable(e: Exception, response: httpx.Response, prompt_estimate: int) -> LLMError:
    # A 200 the provider billed for, even if we cannot read it.
    return LLMBadOutput(
        f"malformed response body: {type(e).__name__}: {response.text[:200]!r}",
        prompt_tokens=prompt_estimate,
        usage_estimated=True,
    )


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
