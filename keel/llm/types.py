"""The LLM call's typed values: messages, results, attempts and their cost, the chain's plan,
and the state of the breaker and budget entity workflows.

No I/O and no Temporal imports: safe in workflow code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass
class Message:
    """One chat message.

    >>> Message("user", "Summarise this ticket.")
    Message(role='user', content='Summarise this ticket.')
    """

    role: Literal["system", "user", "assistant"]
    content: str


STREAM_TOPIC = "keel.llm"  # the workflow stream topic LLM calls publish tokens to


@dataclass
class StreamEvent:
    """One event of an LLM call's token stream (``temporalio.contrib.workflow_streams`` topic
    ``keel.llm``): ``start`` of an attempt, a ``token`` (a piece of its reply), ``discard`` (the
    attempt's text so far is void: it failed mid-stream, or its reply was invalid; ``text`` says
    why; a retry, repair or the next provider follows with its own ``start``), ``end``.

    >>> StreamEvent("token", call=1, attempt=1, provider="default", text="The lens").text
    'The lens'
    """

    kind: Literal["start", "token", "discard", "end"]
    call: int
    attempt: int = 0
    provider: str = ""
    text: str = ""


@dataclass
class RunBudget:
    """The most a workflow run may spend on LLM calls, in USD, every attempt of every call counted.

    Checked before each request: once spent, no further request is made in that run (calls return
    ``ok=False`` with a ``run_budget_exhausted`` decision); requests already in flight finish.

    >>> RunBudget(usd=0.02).usd
    0.02
    """

    usd: float


@dataclass
class LLMCache:
    """Answer-cache use of one call (when the deployment enables the cache).

    :param key: what identifies the request besides the tenant, model and output model; usually
        the (scrubbed) question. Default: the last user message.
    :param context_ids: ids of the context the prompt was built from (e.g. retrieved chunk ids),
        part of the exact key; a semantic hit is served only if every id it cites is here again.
    :param semantic: also look up questions of similar meaning (cosine >= the deployment's threshold).
    :param version: the prompt's version: a new prompt never gets an old prompt's answers.
    :param read: False skips the lookup (a fresh value still refreshes the entry).

    >>> LLMCache(key="when was the lens restored?", context_ids=["c1", "c2"], version="answer-v1").semantic
    True
    """

    key: str | None = None
    context_ids: list[str] = field(default_factory=list)
    semantic: bool = True
    version: str = ""
    read: bool = True


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AttemptOutcome(str, enum.Enum):
    ANSWERED = "answered"  # a reply that validated
    REPLIED = "replied"  # a reply, not validated yet
    INVALID = "invalid"  # a reply that did not validate (schema, citations, empty)
    FAILED = "failed"  # a retryable error: 429, 5xx, timeout, reset, unreadable body
    REJECTED = "rejected"  # a non-retryable error: 400/401/403/404/422, or a too long Retry-After
    SKIPPED = "skipped"  # not tried: its circuit is open


@dataclass
class ProviderAttempt:
    """One HTTP request to a provider (or a provider skipped), with what it cost."""

    provider: str
    model: str
    outcome: AttemptOutcome
    error_type: str | None = None
    message: str | None = None
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False  # no usage reported, the prompt is counted at an estimated size
    cost_usd: float = 0.0
    call: int = 0  # the run's n-th LLM call (0 for a skipped provider)
    attempt: int = 0  # Temporal's attempt number within that call
    retry_after_seconds: float | None = None


class DecisionKind(str, enum.Enum):
    TENANT_BUDGET_EXHAUSTED = "tenant_budget_exhausted"  # switched to the budget providers
    RUN_BUDGET_EXHAUSTED = "run_budget_exhausted"  # no further LLM call in this run
    CIRCUIT_OPEN = "circuit_open"  # a provider skipped while it cools down


@dataclass
class PolicyDecision:
    kind: DecisionKind
    detail: str


class CacheHit(str, enum.Enum):
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass
class ProviderPlan:
    """A provider of the chain as the run sees it: its settings and its shared health."""

    name: str
    model: str
    max_attempts: int
    timeout_seconds: float
    budget_fallback: bool
    price_prompt_per_1k: float
    price_completion_per_1k: float
    open_until: datetime | None = None  # circuit open until then
    consecutive_failures: int = 0


@dataclass
class LLMPlan:
    providers: list[ProviderPlan]
    period: str  # the tenant budget's current period, e.g. "2026-11"
    tenant_spent_usd: float = 0.0
    tenant_budget_usd: float | None = None
    cache_enabled: bool = False
    semantic_cache: bool = False


@dataclass
class HealthReport:
    """An attempt's outcome as the provider's circuit breaker sees it."""

    ok: bool
    error_type: str | None = None
    message: str | None = None
    retry_after_seconds: float | None = None
    # From the provider's settings, so the breaker needs no configuration of its own.
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 30.0
    max_retry_after_seconds: float = 30.0


@dataclass
class ProviderHealthState:
    provider: str
    consecutive_failures: int = 0
    open_until: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    successes: int = 0
    times_opened: int = 0


@dataclass
class ProviderHealthInput:
    state: ProviderHealthState


@dataclass
class Charge:
    """What one attempt cost a tenant."""

    period: str
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    provider: str = ""


@dataclass
class PeriodSpend:
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0


@dataclass
class TenantBudgetInput:
    tenant: str
    periods: dict[str, PeriodSpend] = field(default_factory=dict)


@dataclass
class LLMResult(Generic[T]):
    """What :func:`keel.llm.complete` returns: a validated value, or why there is none.

    ``attempts`` lists every request of this call (Temporal retries, repairs and other providers
    included) with its usage and cost; ``usage`` and ``cost_usd`` are their totals.

    >>> r = LLMResult(ok=False, reason="invalid answer after repair: priority: Input should be a valid integer")
    >>> r.ok, r.value, r.reason.startswith("invalid")
    (False, None, True)
    """

    ok: bool
    value: T | None = None
    reason: str | None = None  # why not ok
    errors: list[str] = field(default_factory=list)  # validation errors of the last reply
    provider: str = ""  # who produced the value
    model: str = ""  # the model of the last reply
    attempts: list[ProviderAttempt] = field(default_factory=list)
    decisions: list[PolicyDecision] = field(default_factory=list)
    requests: int = 0  # requests made (each may have several Temporal attempts)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    providers: list[str] = field(default_factory=list)  # the chain as planned for this call
    cache_looked_up: bool = False
    cache: CacheHit | None = None
    cache_source_workflow_id: str | None = None
    cache_similarity: float | None = None
