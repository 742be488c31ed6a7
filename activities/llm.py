"""LLM-call activities: plan a run's provider chain, and make one call to one provider.

``generate_answer`` runs on the provider's own task queue (``<queue>-llm-<provider>``), so
each provider has its own concurrency slots and, optionally, a fleet-wide rate limit. Every
attempt, failed or not, reports what it cost to the run it belongs to and to the tenant's
ledger, and a failed one to the provider's circuit breaker, before it returns or raises:
Temporal's retries are never invisible in Keel's accounting.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities._runtime import runtime
from keel import answering
from keel.contracts import (
    AttemptOutcome,
    Charge,
    GenerateInput,
    GenerateOutput,
    HealthReport,
    LLMPlan,
    PeriodSpend,
    PlanInput,
    ProviderAttempt,
    ProviderHealthInput,
    ProviderHealthState,
    ProviderPlan,
    ProviderReportInput,
    TenantBudgetInput,
    Usage,
)
from keel.errors import LLMError, to_application_error
from keel.llm_policy import budget_period
from keel.providers import ProviderConfig, provider_health_id, tenant_budget_id

# The signal by which an attempt reports itself to its AnswerQuestion run.
ATTEMPT_SIGNAL = "llm_attempt"
QUERY_TIMEOUT = timedelta(seconds=5)


@activity.defn
async def plan_llm_call(inp: PlanInput) -> LLMPlan:
    """The chain with each provider's shared health, and the tenant's spend this period."""
    s = runtime().settings
    chain = s.provider_chain
    client = activity.client()
    period = budget_period(datetime.now(timezone.utc), s.budget_period)
    budget = s.tenant_budget(inp.tenant)
    queue = inp.entity_task_queue
    queries = [_query(client, provider_health_id(queue, p.name), "state", ProviderHealthState) for p in chain]
    if budget is not None:
        queries.append(_query(client, tenant_budget_id(queue, inp.tenant), "spend", PeriodSpend, period))
    answers = await asyncio.gather(*queries)  # concurrently: one round trip on the happy path
    health, spend = answers[: len(chain)], answers[len(chain)] if budget is not None else None
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


@activity.defn
async def generate_answer(inp: GenerateInput) -> GenerateOutput:
    s = runtime().settings
    try:
        provider = s.provider(inp.provider)
    except ValueError as e:
        raise ApplicationError(str(e), type="UnknownProvider", non_retryable=True) from None
    attempt = activity.info().attempt
    messages = answering.build_messages(
        inp.question, inp.chunks, inp.prompt_version, inp.repair_errors, inp.previous_output
    )
    try:
        completion = await provider.client().complete(
            messages, json_schema=answering.answer_schema(len(inp.chunks)), max_tokens=s.llm_max_tokens
        )
    except LLMError as e:
        usage = Usage(e.prompt_tokens, e.completion_tokens)
        record = ProviderAttempt(
            provider=provider.name,
            model=provider.model,
            outcome=AttemptOutcome.FAILED if e.retryable else AttemptOutcome.REJECTED,
            error_type=type(e).__name__,
            message=e.message[:300],
            usage=usage,
            usage_estimated=e.usage_estimated,
            cost_usd=provider.cost_usd(usage.prompt_tokens, usage.completion_tokens),
            call=inp.call,
            attempt=attempt,
            retry_after_seconds=e.retry_after,
        )
        health = _health_report(provider, ok=False, error_type=type(e).__name__, message=e.message, retry_after=e.retry_after)
        await _report(inp, provider, record, health)
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
    # Whether the reply is an answer is for validation to say: the run reports that to the breaker.
    await _report(inp, provider, record, None)
    return GenerateOutput(content=completion.content, model=completion.model, usage=usage, provider=provider.name, record=record)


@activity.defn
async def report_provider_health(inp: ProviderReportInput) -> None:
    s = runtime().settings
    provider = s.provider(inp.provider)
    report = _health_report(provider, ok=inp.ok, error_type=inp.error_type, message=inp.message)
    await _signal_health(activity.client(), inp.entity_task_queue, provider, report)


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


def _signal_health(client: Client, queue: str, provider: ProviderConfig, report: HealthReport):
    return client.start_workflow(
        "ProviderHealth",
        ProviderHealthInput(state=ProviderHealthState(provider=provider.name)),
        id=provider_health_id(queue, provider.name),
        task_queue=queue,
        start_signal="report",
        start_signal_args=[report],
    )


async def _report(inp: GenerateInput, provider: ProviderConfig, record: ProviderAttempt, health: HealthReport | None) -> None:
    """Tell the run, the tenant's ledger and (on a failure) the breaker about this attempt.

    A report that cannot be delivered is logged, not raised: failing the attempt would make
    Temporal call the provider again, which costs more than a missing line in a ledger.
    """
    client = activity.client()
    info = activity.info()
    sends = [client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id).signal(ATTEMPT_SIGNAL, record)]
    tokens = record.usage.prompt_tokens + record.usage.completion_tokens
    if inp.tenant and inp.entity_task_queue and (tokens or record.cost_usd):
        period = budget_period(datetime.now(timezone.utc), runtime().settings.budget_period)
        charge = Charge(period, record.cost_usd, record.usage.prompt_tokens, record.usage.completion_tokens, provider.name)
        sends.append(
            client.start_workflow(
                "TenantBudget",
                TenantBudgetInput(tenant=inp.tenant),
                id=tenant_budget_id(inp.entity_task_queue, inp.tenant),
                task_queue=inp.entity_task_queue,
                start_signal="charge",
                start_signal_args=[charge],
            )
        )
    if health is not None and inp.entity_task_queue:
        sends.append(_signal_health(client, inp.entity_task_queue, provider, health))
    for outcome in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(outcome, BaseException):
            activity.logger.warning("could not report an LLM attempt of %s: %s", provider.name, outcome)


LLM_ACTIVITIES = [generate_answer]
PLAN_ACTIVITIES = [plan_llm_call, report_provider_health]
