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
from dataclasses import dataclass
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
        self, messages: list[dict[str, str]], *, json_schema: dict[str, Any] | None = None, max_tokens: int = 256
    ) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if json_schema is not None:
            body["response_format"] = self.response_format.request_field(json_schema)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        estimate = estimate_tokens(messages)
        response = await self._post(f"{self.base_url}/chat/completions", body, headers, estimate)
        return self._parse(response, estimate)

    def _parse(self, response: httpx.Response, prompt_estimate: int) -> Completion:
        self._raise_for_status(response, _error_text(response))
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _unreadable(e, response, prompt_estimate) from None
        usage = data.get("usage") or {}
        return Completion(
            content=content,
            model=data.get("model") or self.model,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
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
        self, messages: list[dict[str, str]], *, json_schema: dict[str, Any] | None = None, max_tokens: int = 256
    ) -> Completion:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
        }
        if system:
            body["system"] = system
        if json_schema is not None:
            body["tools"] = [
                {"name": self.TOOL, "description": "Reply with the answer and the sources it cites.", "input_schema": json_schema}
            ]
            body["tool_choice"] = {"type": "tool", "name": self.TOOL}
        headers = {"anthropic-version": self.version}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        estimate = estimate_tokens(messages)
        response = await self._post(f"{self.base_url}/v1/messages", body, headers, estimate)
        self._raise_for_status(response, _error_text(response))
        try:
            data = response.json()
            blocks = data["content"]
            tool_inputs = [b["input"] for b in blocks if b.get("type") == "tool_use"]
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            content = json.dumps(tool_inputs[0]) if tool_inputs else text
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _unreadable(e, response, estimate) from None
        usage = data.get("usage") or {}
        return Completion(
            content=content,
            model=data.get("model") or self.model,
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
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
