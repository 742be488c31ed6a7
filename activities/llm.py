"""LLM-call activities behind :func:`keel.llm.complete`.

* ``keel.llm_prepare`` (local): reads every provider's shared health and the tenant's spend
  (concurrent queries to the breaker and budget entity workflows), stores the prompt once in the
  blob store, and looks the answer cache up. One local activity: no task-queue round trip.
* ``keel.llm_request`` runs on the provider's own task queue (``<queue>-llm-<provider>``): one
  HTTP request; Temporal retries it with the provider's policy. Every attempt, failed or not,
  reports what it cost to the run it belongs to (a failed one by signal ``keel_llm_attempt``,
  handled by ``complete`` itself; a reply in its result), to the tenant's ledger and, on a
  failure, to the provider's breaker, before it returns or raises: Temporal's retries are never
  invisible in Keel's accounting.
* ``keel.llm_finish`` (local): stores a validated value in the cache and tells breakers about
  providers that answered after failing or stayed invalid after a repair.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from keel import telemetry
from keel.activities._runtime import runtime
from keel.errors import LLMError, to_application_error
from keel.llm.cache import AnswerCache, CachedAnswer
from keel.llm.clients import ChatClient
from keel.llm.policy import budget_period
from keel.llm.providers import ProviderConfig, provider_health_id, tenant_budget_id
from keel.llm.types import (
    AttemptOutcome,
    CacheHit,
    Charge,
    HealthReport,
    LLMCache,
    LLMPlan,
    Message,
    STREAM_TOPIC,
    PeriodSpend,
    ProviderAttempt,
    ProviderHealthInput,
    ProviderHealthState,
    ProviderPlan,
    StreamEvent,
    TenantBudgetInput,
    Usage,
)

# The signal by which an attempt reports itself to its run; keel.llm.complete handles it.
ATTEMPT_SIGNAL = "keel_llm_attempt"
QUERY_TIMEOUT = timedelta(seconds=5)


# --- prepare ---------------------------------------------------------------------------------


@dataclass
class PrepareInput:
    tenant: str
    messages: list[Message]
    schema: dict[str, Any]
    cache: LLMCache | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # provider-neutral tool definitions


@dataclass
class CachedValue:
    hit: CacheHit
    content: str  # the validated value, as JSON
    cited_ids: list[str]
    model: str
    provider: str
    source_workflow_id: str
    similarity: float | None = None


@dataclass
class Prepared:
    plan: LLMPlan
    prompt_key: str  # blob: {"messages": [...], "schema": {...}, "tools": [...]}: a conversation's root
    cache_scope: str = ""  # the cache's "prompt version": the caller's version and the output schema
    cached: CachedValue | None = None


@activity.defn(name="keel.llm_prepare")
async def prepare_llm_call(inp: PrepareInput) -> Prepared:
    rt = runtime()
    prompt: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in inp.messages], "schema": inp.schema}
    if inp.tools:
        prompt["tools"] = inp.tools
    prompt_key = rt.blobs.put_json(prompt)
    plan = await _plan(inp.tenant)
    scope = ""
    cached = None
    if plan.cache_enabled and inp.cache is not None:
        schema_hash = hashlib.sha256(json.dumps(inp.schema, sort_keys=True).encode()).hexdigest()[:16]
        scope = f"{inp.cache.version}|{schema_hash}"
        if inp.cache.read:
            cached = await asyncio.to_thread(_lookup, inp, plan, scope)
            telemetry.cache_lookup(inp.tenant, cached.hit.value if cached is not None else "miss")
    return Prepared(plan=plan, prompt_key=prompt_key, cache_scope=scope, cached=cached)


async def _plan(tenant: str) -> LLMPlan:
    """The chain with each provider's shared health, and the tenant's spend this period."""
    s = runtime().settings
    chain = s.provider_chain
    client = runtime().client or activity.client()
    period = budget_period(datetime.now(timezone.utc), s.budget_period)
    budget = s.tenant_budget(tenant)
    queue = s.task_queue
    queries = [_query(client, provider_health_id(queue, p.name), "state", ProviderHealthState) for p in chain]
    if budget is not None:
        queries.append(_query(client, tenant_budget_id(queue, tenant), "spend", PeriodSpend, period))
    answers = await asyncio.gather(*queries)  # concurrently: one round trip on the happy path
    health, spend = answers[: len(chain)], answers[len(chain)] if budget is not None else None
    now = datetime.now(timezone.utc)
    for p, h in zip(chain, health):
        telemetry.breaker_state(p.name, h is not None and h.open_until is not None and h.open_until > now)
    if budget is not None:
        telemetry.budget(tenant, spend.cost_usd if spend else 0.0, budget)
    return LLMPlan(
        providers=[_provider_plan(p, h) for p, h in zip(chain, health)],
        period=period,
        tenant_spent_usd=spend.cost_usd if spend else 0.0,
        tenant_budget_usd=budget,
        cache_enabled=s.cache_enabled,
        semantic_cache=s.cache_enabled and s.semantic_cache_threshold is not None,
    )


def _provider_plan(p: ProviderConfig, health: ProviderHealthState | None) -> ProviderPlan:
    return ProviderPlan(
        name=p.name,
        model=p.model,
        max_attempts=p.max_attempts,
        timeout_seconds=p.timeout_seconds,
        budget_fallback=p.budget_fallback,
        price_prompt_per_1k=p.price_prompt_per_1k,
        price_completion_per_1k=p.price_completion_per_1k,
        open_until=health.open_until if health else None,
        consecutive_failures=health.consecutive_failures if health else 0,
    )


async def _query(client: Client, workflow_id: str, query: str, result_type: type, *args: Any) -> Any:
    """A ledger's or breaker's state; None when it does not exist yet (nothing to report)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await handle.query(query, *args, result_type=result_type, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            # Fail open: an unreachable ledger must not stop answers; the run proceeds unchecked.
            activity.logger.warning("cannot read %s (%s): proceeding without it", workflow_id, e)
        return None
    except WorkflowQueryFailedError as e:
        activity.logger.warning("cannot read %s (%s): proceeding without it", workflow_id, e)
        return None


def answer_cache() -> AnswerCache:
    s = runtime().settings
    return runtime().once(
        "answer-cache",
        lambda: AnswerCache(
            s.answer_cache_path, ttl_seconds=s.cache_ttl_seconds, semantic_threshold=s.semantic_cache_threshold or 1.0,
            keys=runtime().keys,
        ),
    )


def _lookup(inp: PrepareInput, plan: LLMPlan, scope: str) -> CachedValue | None:
    cache, now = answer_cache(), time.time()
    key, ids = inp.cache.key or "", inp.cache.context_ids
    models = list(dict.fromkeys(p.model for p in plan.providers))
    entry = cache.lookup_exact(inp.tenant, scope, key, ids, models, now=now)
    if entry is not None:
        return _cached(CacheHit.EXACT, entry, None)
    if inp.cache.semantic and plan.semantic_cache:
        found = cache.lookup_semantic(inp.tenant, scope, runtime().embedder().embed_query(key), ids, models, now=now)
        if found is not None:
            return _cached(CacheHit.SEMANTIC, *found)
    return None


def _cached(kind: CacheHit, entry: CachedAnswer, similarity: float | None) -> CachedValue:
    return CachedValue(
        hit=kind,
        content=entry.answer,
        cited_ids=entry.cited_chunk_ids,
        model=entry.model,
        provider=entry.provider,
        source_workflow_id=entry.workflow_id,
        similarity=None if similarity is None else round(similarity, 4),
    )


# --- one request -------------------------------------------------------------------------------


@dataclass
class RequestInput:
    provider: str
    prompt_key: str  # the conversation: its root (a prepared prompt) or a later segment
    tenant: str = ""
    call: int = 0  # the run's n-th request, to tell the attempts of two requests apart
    # The repair re-ask: the invalid reply and the validation errors, appended to the prompt.
    repair: list[Message] = field(default_factory=list)
    max_tokens: int | None = None
    # A conversation that goes on (an agent): new messages (tool results by reference) become a
    # segment after prompt_key, and the reply another; the output names the new head.
    append: list[dict[str, Any]] = field(default_factory=list)
    conversation: bool = False
    stream: bool = False  # publish tokens to the run's workflow stream (topic keel.llm)


@dataclass
class RequestOutput:
    content: str
    model: str
    usage: Usage
    provider: str
    record: ProviderAttempt  # this attempt, as reported to the run
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments"}
    head: str = ""  # with conversation: the segment holding this reply


def conversation(key: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """(messages, schema, tools) of the conversation whose last segment is ``key``.

    A conversation is a chain of content-addressed segments ``{"parent": key, "messages": [...]}``
    ending at a root (a prepared prompt, with the schema and tools). Workflow history carries
    only keys, so a turn's input is the previous head plus what is new, never the transcript.
    Tool results are stored by reference (``content_key``) and read here.
    """
    rt = runtime()
    cache = rt.once("conversations", lambda: collections.OrderedDict())
    segments, k, base = [], key, None
    while k:
        if k in cache:
            base = cache[k]
            break
        seg = rt.blobs.get_json(k)
        segments.append(seg)
        k = seg.get("parent")
    if base is None:
        root = segments.pop()
        base = ([_resolved(m) for m in root["messages"]], root.get("schema"), root.get("tools") or [])
    messages = list(base[0])
    for seg in reversed(segments):
        messages.extend(_resolved(m) for m in seg["messages"])
    value = (messages, base[1], base[2])
    cache[key] = value
    while len(cache) > 64:
        cache.popitem(last=False)
    return value


def _resolved(message: dict[str, Any]) -> dict[str, Any]:
    if "content_key" not in message:
        return message
    out = {k: v for k, v in message.items() if k != "content_key"}
    out["content"] = runtime().blobs.get(message["content_key"]).decode()
    return out


@activity.defn(name="keel.llm_request")
async def request_llm(inp: RequestInput) -> RequestOutput:
    rt = runtime()
    s = rt.settings
    try:
        provider = s.provider(inp.provider)
    except ValueError as e:
        raise ApplicationError(str(e), type="UnknownProvider", non_retryable=True) from None
    attempt = activity.info().attempt
    head = rt.blobs.put_json({"parent": inp.prompt_key, "messages": inp.append}) if inp.append else inp.prompt_key
    messages, schema, tools = conversation(head)
    messages = messages + [{"role": m.role, "content": m.content} for m in inp.repair]
    async with contextlib.AsyncExitStack() as stack:
        stream = await stack.enter_async_context(_TokenStream(inp, provider.name, attempt)) if inp.stream else None
        return await _request(inp, provider, attempt, messages, schema, tools, head, stream)


async def _request(inp: RequestInput, provider: ProviderConfig, attempt: int, messages, schema, tools, head, stream) -> RequestOutput:
    rt, s = runtime(), runtime().settings
    client = provider.client()
    extra = {"on_delta": stream.token} if stream is not None and isinstance(client, ChatClient) else {}
    try:
        completion = await client.complete(
            messages, json_schema=schema, max_tokens=inp.max_tokens or s.llm_max_tokens, tools=tools or None, **extra
        )
    except LLMError as e:
        if stream is not None:
            await stream.discard(f"{type(e).__name__}: {e.message}"[:300])
        record = attempt_record(provider, e, call=inp.call, attempt=attempt)
        health = _health_report(provider, ok=False, error_type=type(e).__name__, message=e.message, retry_after=e.retry_after)
        await _report(inp.tenant, provider, record, health)
        raise to_application_error(
            e, attempt=attempt, max_retry_after=provider.max_retry_after_seconds, details=(record,)
        ) from None
    usage = Usage(completion.prompt_tokens, completion.completion_tokens)
    record = ProviderAttempt(
        provider=provider.name,
        model=completion.model,
        outcome=AttemptOutcome.REPLIED,
        usage=usage,
        cost_usd=provider.cost_usd(usage.prompt_tokens, usage.completion_tokens),
        call=inp.call,
        attempt=attempt,
    )
    if stream is not None:
        await stream.end(completion.content if not extra else None)
    # Whether the reply is valid is for the workflow to say: it reports that to the breaker.
    await _report(inp.tenant, provider, record, None)
    reply_head = ""
    if inp.conversation:
        reply: dict[str, Any] = {"role": "assistant", "content": completion.content}
        if completion.tool_calls:
            reply["tool_calls"] = completion.tool_calls
        reply_head = rt.blobs.put_json({"parent": head, "messages": [reply]})
    return RequestOutput(
        content=completion.content, model=completion.model, usage=usage, provider=provider.name, record=record,
        tool_calls=completion.tool_calls, head=reply_head,
    )


class _TokenStream:
    """Publishes one attempt's tokens to the calling run's workflow stream (the run constructs a
    ``WorkflowStream``): a batch at most every 100 ms, flushed when the attempt ends or fails.

    Flushes are awaited here rather than left to the stream client's background flusher:
    cancelling that flusher on exit can hang (Python 3.11's ``wait_for`` may swallow the
    cancellation), which held a finished request until its timeout.
    """

    EVERY = 0.1  # seconds between batches

    def __init__(self, inp: RequestInput, provider: str, attempt: int) -> None:
        self.call, self.provider, self.attempt = inp.call, provider, attempt

    async def __aenter__(self) -> _TokenStream:
        from temporalio.contrib.workflow_streams import WorkflowStreamClient

        self.client = WorkflowStreamClient.from_within_activity()
        self.topic = self.client.topic(STREAM_TOPIC, type=StreamEvent)
        self._publish("start")
        await self._flush()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._flush()

    def _publish(self, kind: str, text: str = "") -> None:
        self.topic.publish(StreamEvent(kind, self.call, self.attempt, self.provider, text))

    async def _flush(self) -> None:
        self._last = time.monotonic()
        try:
            await self.client.flush()
        except Exception as e:  # noqa: BLE001 - a lost token never fails the request
            activity.logger.warning("could not publish tokens: %s", e)

    async def token(self, piece: str) -> None:
        self._publish("token", piece)
        if time.monotonic() - self._last >= self.EVERY:
            await self._flush()

    async def discard(self, why: str) -> None:
        self._publish("discard", why)
        await self._flush()

    async def end(self, whole: str | None) -> None:
        if whole is not None:  # a provider that does not stream: its reply in one piece
            self._publish("token", whole)
        self._publish("end")
        await self._flush()


def attempt_record(provider: ProviderConfig, e: LLMError, *, call: int, attempt: int) -> ProviderAttempt:
    usage = Usage(e.prompt_tokens, e.completion_tokens)
    return ProviderAttempt(
        provider=provider.name,
        model=provider.model,
        outcome=AttemptOutcome.FAILED if e.retryable else AttemptOutcome.REJECTED,
        error_type=type(e).__name__,
        message=e.message[:300],
        usage=usage,
        usage_estimated=e.usage_estimated,
        cost_usd=provider.cost_usd(usage.prompt_tokens, usage.completion_tokens),
        call=call,
        attempt=attempt,
        retry_after_seconds=e.retry_after,
    )


def _health_report(
    provider: ProviderConfig, *, ok: bool, error_type: str | None = None, message: str | None = None,
    retry_after: float | None = None,
) -> HealthReport:
    return HealthReport(
        ok=ok,
        error_type=error_type,
        message=(message or "")[:200] or None,
        retry_after_seconds=retry_after,
        breaker_failures=provider.breaker_failures,
        breaker_cooldown_seconds=provider.breaker_cooldown_seconds,
        max_retry_after_seconds=provider.max_retry_after_seconds,
    )


async def _signal_health(client: Client, provider: ProviderConfig, report: HealthReport):
    from keel._codec import tenant_scope
    from keel.keys import DEPLOYMENT

    queue = runtime().settings.task_queue
    # The breaker is the deployment's, not the reporting run's tenant's: sealed with the
    # deployment key, so no tenant's caller can speak for it.
    with tenant_scope(DEPLOYMENT):
        return await client.start_workflow(
            "ProviderHealth",
            ProviderHealthInput(state=ProviderHealthState(provider=provider.name)),
            id=provider_health_id(queue, provider.name),
            task_queue=queue,
            start_signal="report",
            start_signal_args=[report],
        )


async def _report(tenant: str, provider: ProviderConfig, record: ProviderAttempt, health: HealthReport | None) -> None:
    """Tell the run, the tenant's ledger and (on a failure) the breaker about this attempt.

    A report that cannot be delivered is logged, not raised: failing the attempt would make
    Temporal call the provider again, which costs more than a missing line in a ledger.
    """
    telemetry.llm_attempt(tenant, record)
    client = activity.client()
    info = activity.info()
    queue = runtime().settings.task_queue
    sends = []
    if record.outcome is not AttemptOutcome.REPLIED:
        # A failed attempt is retried (or ends the call) without returning: the signal is how
        # the run hears of it. A reply travels in the result, so it needs no signal (which would
        # cost the run a workflow task).
        sends.append(client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id).signal(ATTEMPT_SIGNAL, record))
    tokens = record.usage.prompt_tokens + record.usage.completion_tokens
    # The ledger is the budget's: a tenant without one is not charged (its spend is in every
    # run's result and search attributes), which saves each request a round trip and the
    # worker a workflow task.
    if tenant and runtime().settings.tenant_budget(tenant) is not None and (tokens or record.cost_usd):
        period = budget_period(datetime.now(timezone.utc), runtime().settings.budget_period)
        charge = Charge(period, record.cost_usd, record.usage.prompt_tokens, record.usage.completion_tokens, provider.name)
        sends.append(
            client.start_workflow(
                "TenantBudget",
                TenantBudgetInput(tenant=tenant),
                id=tenant_budget_id(queue, tenant),
                task_queue=queue,
                start_signal="charge",
                start_signal_args=[charge],
            )
        )
    if health is not None:
        sends.append(_signal_health(client, provider, health))
    for outcome in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(outcome, BaseException):
            activity.logger.warning("could not report an LLM attempt of %s: %s", provider.name, outcome)


# --- finish ----------------------------------------------------------------------------------


@dataclass
class ProviderReport:
    """What a run tells a provider's breaker: a valid answer after failures, or a reply still
    invalid after the repair re-ask (a drifting model counts like an outage)."""

    provider: str
    ok: bool
    error_type: str | None = None
    message: str | None = None


@dataclass
class CacheStore:
    tenant: str
    scope: str
    key: str
    context_ids: list[str]
    model: str
    provider: str
    content: str
    cited_ids: list[str]
    workflow_id: str
    semantic: bool


@dataclass
class FinishInput:
    reports: list[ProviderReport] = field(default_factory=list)
    store: CacheStore | None = None


@activity.defn(name="keel.llm_finish")
async def finish_llm_call(inp: FinishInput) -> None:
    s = runtime().settings
    client = runtime().client or activity.client()
    sends = []
    for r in inp.reports:
        provider = s.provider(r.provider)
        sends.append(_signal_health(client, provider, _health_report(provider, ok=r.ok, error_type=r.error_type, message=r.message)))
    for outcome in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(outcome, BaseException):
            activity.logger.warning("could not report a provider's health: %s", outcome)
    if inp.store is not None:
        try:
            await asyncio.to_thread(_store, inp.store)
        except Exception as e:  # the cache is an optimisation: never fail a run for it
            activity.logger.warning("could not store the value in the cache: %s", e)


def _store(st: CacheStore) -> None:
    embedding = runtime().embedder().embed_query(st.key) if st.semantic and runtime().settings.semantic_cache_threshold else None
    answer_cache().store(
        CachedAnswer(
            tenant=st.tenant,
            prompt_version=st.scope,
            model=st.model,
            provider=st.provider,
            question=st.key,
            chunk_ids=st.context_ids,
            answer=st.content,
            cited_chunk_ids=st.cited_ids,
            workflow_id=st.workflow_id,
            embedding=embedding,
        ),
        now=time.time(),
    )


LLM_REQUEST_ACTIVITIES = [request_llm]
LLM_ACTIVITIES = [prepare_llm_call, finish_llm_call]
