"""An OpenAI-compatible chat-completions client over ``httpx`` that classifies every failure.

It makes exactly one HTTP request per call and never retries: the activity's Temporal retry
policy does that, reading the classification from :mod:`keel.errors` (and the server's
``Retry-After`` through ``LLMRateLimited.retry_after``). Works against OpenAI, Azure OpenAI's
v1 endpoint, vLLM, Ollama and llama.cpp's server.
"""

from __future__ import annotations

import email.utils
import enum
import time
from dataclasses import dataclass
from typing import Any

import httpx

from keel.errors import LLMBadOutput, LLMRateLimited, LLMRequestRejected, LLMUnavailable


class ResponseFormat(str, enum.Enum):
    """How to ask for schema-constrained JSON output."""

    JSON_SCHEMA = "json_schema"  # OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's own server
    JSON_OBJECT = "json_object"  # llama-cpp-python's server: {"type": "json_object", "schema": ...}

    def request_field(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self is ResponseFormat.JSON_OBJECT:
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "keel_answer", "schema": schema, "strict": True}}


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


class ChatClient:
    """One chat-completions endpoint.

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
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.response_format = response_format

    async def complete(
        self, messages: list[dict[str, str]], *, json_schema: dict[str, Any] | None = None, max_tokens: int = 256
    ) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if json_schema is not None:
            body["response_format"] = self.response_format.request_field(json_schema)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise LLMUnavailable(f"LLM request timed out after {self.timeout}s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise LLMUnavailable(f"LLM connection failed: {type(e).__name__}: {e}") from None
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> Completion:
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise LLMRateLimited(f"LLM rate limited (429): {_error_text(response)}", retry_after=retry_after)
        if status >= 500:
            raise LLMUnavailable(f"LLM server error {status}: {_error_text(response)}")
        if status >= 400:
            raise LLMRequestRejected(f"LLM rejected the request ({status}): {_error_text(response)}")
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LLMBadOutput(f"malformed chat-completions body: {type(e).__name__}: {response.text[:200]!r}") from None
        usage = data.get("usage") or {}
        return Completion(
            content=content,
            model=data.get("model") or self.model,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
