"""The provider chain's configuration: one :class:`ProviderConfig` per LLM endpoint.

Keel tries the providers in order (see ``workflows/llm_chain.py``). A provider is an
OpenAI-compatible chat-completions endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's
server) or Anthropic's Messages API. In ``keel.toml``::

    [[providers]]
    name = "openai"
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"
    price_prompt_per_1k = 0.00015
    price_completion_per_1k = 0.0006

    [[providers]]
    name = "claude"
    kind = "anthropic"
    base_url = "https://api.anthropic.com"
    model = "claude-3-5-haiku-latest"
    api_key_env = "ANTHROPIC_API_KEY"

    [[providers]]
    name = "local"
    base_url = "http://127.0.0.1:8088/v1"
    model = "smollm2-135m-instruct"
    response_format = "json_object"
    budget_fallback = true

or the same list as JSON in ``KEEL_PROVIDERS``.
"""

from __future__ import annotations

import enum
import os

from pydantic import BaseModel, ConfigDict, Field

from keel.llm.clients import AnthropicClient, ChatClient, ResponseFormat


class ProviderKind(str, enum.Enum):
    """The wire protocol a provider speaks."""

    OPENAI = "openai"  # chat completions: OpenAI, Azure OpenAI v1, vLLM, Ollama, llama.cpp
    ANTHROPIC = "anthropic"  # Messages API


class ProviderConfig(BaseModel):
    """One LLM endpoint of the chain (``[[providers]]`` in ``keel.toml``; every field below).

    >>> p = ProviderConfig(name="openai", base_url="https://api.openai.com/v1", model="gpt-4o-mini",
    ...                    price_prompt_per_1k=0.00015, price_completion_per_1k=0.0006)
    >>> round(p.cost_usd(prompt_tokens=1000, completion_tokens=500), 6)
    0.00045
    >>> ProviderConfig(name="bad name", base_url="http://x", model="m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ProviderConfig
    name
      String should match pattern '^[A-Za-z0-9_.-]+$' ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names a Temporal task queue and a workflow id, so: letters, digits, "-", "_", ".".
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: ProviderKind = ProviderKind.OPENAI
    base_url: str
    model: str
    api_key: str | None = None
    api_key_env: str | None = None  # read the key from this environment variable instead
    timeout_seconds: float = Field(default=60.0, gt=0)
    # Temporal attempts of one call before the chain moves to the next provider.
    max_attempts: int = Field(default=3, ge=1)
    # Concurrent requests per worker process (the provider's task queue slots).
    max_concurrency: int = Field(default=4, ge=1)
    # Requests per second across every worker: a server-side limit on the provider's task queue.
    requests_per_second: float | None = Field(default=None, gt=0)
    price_prompt_per_1k: float = Field(default=0.0, ge=0)  # USD
    price_completion_per_1k: float = Field(default=0.0, ge=0)  # USD
    response_format: ResponseFormat = ResponseFormat.JSON_SCHEMA
    # The chain to use once a tenant's budget is spent (in order); also part of the normal chain.
    budget_fallback: bool = False
    # A 429 asking to wait longer than this moves on to the next provider at once.
    max_retry_after_seconds: float = Field(default=30.0, ge=0)
    # Circuit breaker: this many retryable failures in a row open it for the cooldown.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, ge=0)
    anthropic_version: str = "2023-06-01"

    def key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or self.api_key
        return self.api_key

    def client(self) -> ChatClient | AnthropicClient:
        if self.kind is ProviderKind.ANTHROPIC:
            return AnthropicClient(
                self.base_url, self.model, api_key=self.key(), timeout=self.timeout_seconds, version=self.anthropic_version
            )
        return ChatClient(
            self.base_url, self.model, api_key=self.key(), timeout=self.timeout_seconds, response_format=self.response_format
        )

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_prompt_per_1k + completion_tokens * self.price_completion_per_1k) / 1000


def provider_task_queue(task_queue: str, provider: str) -> str:
    """The task queue of one provider's LLM calls: its own slots and rate limit."""
    return f"{task_queue}-llm-{provider}"


def provider_health_id(task_queue: str, provider: str) -> str:
    """The workflow id of a provider's circuit breaker (``workflows/provider_health.py``)."""
    return f"{task_queue}-provider-{provider}"


def tenant_budget_id(task_queue: str, tenant: str) -> str:
    """The workflow id of a tenant's spend ledger (``workflows/tenant_budget.py``)."""
    return f"{task_queue}-budget-{tenant}"
