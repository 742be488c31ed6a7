"""``keel.llm.complete``: one generic LLM call with the whole provider chain behind it.

Inside a workflow each part is a durable step: ``keel.llm_prepare`` (local: breaker and budget
reads, the prompt stored once, the cache lookup), then per provider of the chain one
``keel.llm_request`` on the provider's own task queue with its own retry policy, validation of
the reply *in the workflow* (pydantic, pure), one repair re-ask with the validation errors, the
next provider when a provider fails for good or stays invalid; finally ``keel.llm_finish``
(local: breaker reports, cache store). There is no retry loop here: Temporal retries requests.

Every attempt reports itself to the run with a signal that ``complete`` handles itself (it
registers the handler on first use), so a user's workflow needs no handler to be accounted.

Outside a workflow the same call runs in-process against the same providers (retries with
backoff, fall-over, repair, run budget; no shared breaker, tenant budget or cache, which live in
Temporal), so prompts and output models can be tested without Temporal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import ActivityError, ApplicationError

from keel import _deployment
from keel.activities.llm import (
    ATTEMPT_SIGNAL,
    CacheStore,
    FinishInput,
    Prepared,
    PrepareInput,
    ProviderReport,
    RequestInput,
    RequestOutput,
    finish_llm_call,
    prepare_llm_call,
    request_llm,
)
from keel.errors import LLM_BACKOFF, NON_RETRYABLE, BudgetExceeded, InvalidRequest, LLMError, failure_reason
from keel.llm.policy import INVALID_ANSWER, choose_chain
from keel.llm.providers import provider_task_queue
from keel.llm.types import (
    AttemptOutcome,
    CacheHit,
    DecisionKind,
    LLMCache,
    LLMResult,
    Message,
    PolicyDecision,
    ProviderAttempt,
    ProviderPlan,
    STREAM_TOPIC,
    RunBudget,
    StreamEvent,
    Usage,
)
from keel.options import STEP_DEFAULTS, StepOptions

T = TypeVar("T", bound=BaseModel)
ATTEMPTS_QUERY = "keel_llm_attempts"
NO_PROVIDER = "no LLM provider available: every circuit is open"


class RunLedger:
    """Every LLM attempt of one workflow run (Temporal's retries included), once each."""

    def __init__(self) -> None:
        self._attempts: dict[tuple[int, int], ProviderAttempt] = {}
        self.skipped: list[ProviderAttempt] = []
        self.requests = 0

    def record(self, attempt: ProviderAttempt) -> None:
        # The same attempt arrives twice (its own signal, then the request's result): keep one.
        self._attempts.setdefault((attempt.call, attempt.attempt), attempt)

    def mark(self, record: ProviderAttempt, outcome: AttemptOutcome) -> None:
        self._attempts[(record.call, record.attempt)].outcome = outcome

    @property
    def attempts(self) -> list[ProviderAttempt]:
        return self.skipped + sorted(self._attempts.values(), key=lambda a: (a.call, a.attempt))

    def of_calls(self, calls: set[int]) -> list[ProviderAttempt]:
        return [a for a in self.attempts if a.call in calls]

    @property
    def cost_usd(self) -> float:
        return total_cost(self._attempts.values())

    @property
    def usage(self) -> Usage:
        return total_usage(self._attempts.values())


def total_cost(attempts) -> float:
    return float(round(sum(a.cost_usd for a in attempts), 8))


def total_usage(attempts) -> Usage:
    attempts = list(attempts)
    return Usage(sum(a.usage.prompt_tokens for a in attempts), sum(a.usage.completion_tokens for a in attempts))


_LEDGER_ATTR = "_keel_llm_ledger"


def run_ledger() -> RunLedger:
    """This workflow run's ledger, created (with its signal and query handlers) on first use."""
    instance = workflow.instance()
    ledger = getattr(instance, _LEDGER_ATTR, None)
    if ledger is None:
        ledger = RunLedger()
        setattr(instance, _LEDGER_ATTR, ledger)

        def record(attempt: ProviderAttempt) -> None:
            ledger.record(attempt)

        def attempts() -> list[ProviderAttempt]:
            return ledger.attempts

        workflow.set_signal_handler(ATTEMPT_SIGNAL, record)
        workflow.set_query_handler(ATTEMPTS_QUERY, attempts)
    return ledger


def _messages(prompt: str | Sequence[Message | dict], system: str | None) -> list[Message]:
    if isinstance(prompt, str):
        messages = [Message("user", prompt)]
    else:
        messages = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in prompt]
    if system:
        messages.insert(0, Message("system", system))
    if not messages:
        raise InvalidRequest("complete() needs a prompt or at least one message")
    return messages


def output_schema(output: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a provider is asked to follow for ``output``."""
    return output.model_json_schema()


def validate_reply(
    output: type[T], content: str, check: Callable[[T], list[str]] | None = None, *, lenient: bool = False
) -> tuple[T | None, list[str]]:
    """(value, errors) of a reply: pydantic validation, then the caller's own check.

    ``lenient``: raw control characters (a small model's line break inside a string) are read
    as spaces, which JSON allows between tokens anyway.

    >>> from pydantic import BaseModel
    >>> class A(BaseModel):
    ...     answer: str
    >>> validate_reply(A, '{"answer": "two\\nlines"}', lenient=True)
    (A(answer='two lines'), [])
    """
    if lenient:
        content = _CONTROL.sub(" ", content)
    try:
        value = output.model_validate_json(content)
    except ValidationError as e:
        return None, [f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors(include_url=False)]
    errors = list(check(value)) if check else []
    return (None, errors) if errors else (value, [])


_CONTROL = re.compile(r"[\x00-\x1f]")


def repair_messages(previous: str, errors: list[str]) -> list[Message]:
    return [
        Message("assistant", previous),
        Message("user", "Your reply was invalid: " + "; ".join(errors) + ". Reply again with valid JSON that fixes this."),
    ]


def llm_retry(provider: ProviderPlan) -> RetryPolicy:
    # The activity sets next_retry_delay (Retry-After, or a jittered backoff), which overrides
    # these intervals; they apply when a worker dies mid-call. 4xx fail at once.
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=provider.max_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )


async def complete(
    prompt: str | Sequence[Message | dict],
    output: type[T],
    *,
    tenant: str,
    system: str | None = None,
    budget: RunBudget | None = None,
    cache: LLMCache | None = None,
    validate: Callable[[T], list[str]] | None = None,
    judge: Callable[[T], Awaitable[list[str]]] | None = None,
    schema: dict[str, Any] | None = None,
    cites: Callable[[T], list[str]] | None = None,
    max_repairs: int = 1,
    max_tokens: int | None = None,
    options: StepOptions | None = None,
    stream: Any = None,
) -> LLMResult[T]:
    """Ask the provider chain for a value of ``output`` (a pydantic model), validated.

    :param prompt: a user prompt, or the whole conversation as :class:`Message` s (or dicts).
    :param output: the pydantic model the reply must validate against; its JSON schema is sent
        to the provider (structured output / a forced tool call).
    :param tenant: whose budget pays, whose cache is used.
    :param system: a system message put first.
    :param budget: this run's LLM budget (all calls of the run count towards it).
    :param cache: use the answer cache (when the deployment enables it), see :class:`LLMCache`.
    :param validate: more checks on a value that passed the schema; returns error messages (an
        invalid reply gets a repair re-ask with them, like a schema error).
    :param judge: an async check of a reply that passed ``validate``, e.g. a second model asked
        whether the sources support the answer (it may call ``complete`` itself); its errors
        count like ``validate``'s. Not applied to cache hits (they were judged when stored).
    :param schema: a JSON schema to send instead of ``output``'s (e.g. one that enumerates the
        allowed citation labels); the reply is still validated against ``output``.
    :param cites: the context ids a value relies on; a semantic cache hit is served only when
        all of them are in ``cache.context_ids`` again.
    :param max_repairs: re-asks per provider with the validation errors before moving on.
    :param max_tokens: the reply's token limit (default: the deployment's ``llm_max_tokens``).
    :param options: overrides for the request step (timeouts, retry policy, task queue).
    :param stream: the run's ``temporalio.contrib.workflow_streams.WorkflowStream`` (construct it
        in your workflow's ``__init__``): every attempt publishes its tokens as they arrive to
        topic ``keel.llm`` (:class:`~keel.llm.types.StreamEvent`), and an attempt whose text is
        void (failed mid-stream, or invalid) is followed by a ``discard`` marker.
    :returns: :class:`LLMResult` with ``ok``, ``value`` or ``reason``, and every attempt with
        its usage and cost. A tenant whose budget is spent with no ``budget_fallback`` provider
        raises ``BudgetExceeded`` (non-retryable: the run fails, visible in the UI).

    The same call works outside a workflow (in-process, for tests and scripts):

    >>> import asyncio
    >>> from pydantic import BaseModel
    >>> from keel.testing import FakeOpenAI, Step, in_process
    >>> from keel.llm import complete
    >>> class Triage(BaseModel):
    ...     category: str
    ...     priority: int
    >>> with FakeOpenAI() as fake, in_process(fake):
    ...     fake.script(Step.ok('{"category": "billing", "priority": 2}'))
    ...     result = asyncio.run(complete("Card charged twice", Triage, tenant="acme"))
    >>> result.ok, result.value, len(result.attempts)
    (True, Triage(category='billing', priority=2), 1)
    """
    messages = _messages(prompt, system)
    schema = schema or output_schema(output)
    if cache is not None and cache.key is None:  # by default a request is cached by its last user message
        cache = dataclasses.replace(cache, key=next((m.content for m in reversed(messages) if m.role == "user"), ""))
    call = _Call(output, messages, schema, tenant, budget, cache, validate, cites, max_repairs, max_tokens, options, stream, judge)
    if workflow.in_workflow():
        return await call.in_workflow()
    return await call.in_process()


@dataclass
class _Call:
    output: type
    messages: list[Message]
    schema: dict[str, Any]
    tenant: str
    budget: RunBudget | None
    cache: LLMCache | None
    validate: Callable | None
    cites: Callable | None
    max_repairs: int
    max_tokens: int | None
    options: StepOptions | None
    stream: Any = None  # a WorkflowStream
    judge: Callable | None = None
    result: LLMResult = field(default_factory=lambda: LLMResult(ok=False))
    reasons: list[tuple[str, str]] = field(default_factory=list)

    def _budget_spent(self, spent: float) -> bool:
        if self.budget is None or spent < self.budget.usd:
            return False
        detail = f"run spent ${spent:.6f} of its ${self.budget.usd:.6f} budget: no further LLM call"
        self.result.decisions.append(PolicyDecision(DecisionKind.RUN_BUDGET_EXHAUSTED, detail))
        self.result.reason = detail
        return True

    def _reason(self) -> str:
        if not self.reasons:
            return NO_PROVIDER
        if len(self.reasons) == 1:
            return self.reasons[0][1]
        return "; ".join(f"{name}: {why}" for name, why in self.reasons)

    # --- inside a workflow -----------------------------------------------------------------

    async def in_workflow(self) -> LLMResult:
        ledger = run_ledger()
        prepare = STEP_DEFAULTS["llm_prepare"]
        prepared: Prepared = await workflow.execute_local_activity(
            prepare_llm_call,
            PrepareInput(tenant=self.tenant, messages=self.messages, schema=self.schema, cache=self.cache),
            start_to_close_timeout=prepare.start_to_close_timeout,
            retry_policy=prepare.retry_policy,
        )
        result = self.result
        result.providers = [p.name for p in prepared.plan.providers]
        result.cache_looked_up = prepared.plan.cache_enabled and self.cache is not None and self.cache.read
        if prepared.cached is not None and self._from_cache(prepared):
            return result

        choice = choose_chain(prepared.plan, workflow.now())
        ledger.skipped.extend(choice.skipped)
        result.decisions.extend(choice.decisions)
        if choice.refused:
            raise ApplicationError(choice.refused, type=BudgetExceeded.__name__, non_retryable=True)
        calls: set[int] = set()
        reports: list[ProviderReport] = []
        store: CacheStore | None = None
        for provider in choice.providers:
            repair: list[Message] = []
            reason, invalid = "", False
            for _ in range(1 + self.max_repairs):
                if self._budget_spent(ledger.cost_usd):
                    break
                try:
                    reply = await self._request(ledger, provider, prepared.prompt_key, repair, calls)
                except ActivityError as e:
                    reason, invalid = "LLM failed: {}: {}".format(*failure_reason(e)), False
                    break
                result.model = reply.model
                # 0.5: a stray line break inside a string no longer costs a repair re-ask.
                value, errors = validate_reply(self.output, reply.content, self.validate, lenient=workflow.patched("keel-lenient-json"))
                if not errors and self.judge is not None:
                    errors = list(await self.judge(value))
                ledger.mark(reply.record, AttemptOutcome.INVALID if errors else AttemptOutcome.ANSWERED)
                if not errors:
                    result.ok, result.value, result.provider, result.errors = True, value, provider.name, []
                    # Only a provider known to have failed hears about it: the happy path adds nothing.
                    if provider.consecutive_failures or any(
                        a.provider == provider.name and a.outcome is AttemptOutcome.FAILED for a in ledger.of_calls(calls)
                    ):
                        reports.append(ProviderReport(provider.name, ok=True))
                    store = self._cache_store(prepared, reply, value)
                    break
                result.errors = errors
                reason, invalid = "invalid answer after repair: " + "; ".join(errors), True
                repair = repair_messages(reply.content, errors)
                if self.stream is not None:
                    event = StreamEvent("discard", reply.record.call, reply.record.attempt, provider.name, "invalid reply: " + "; ".join(errors))
                    self.stream.topic(STREAM_TOPIC, type=StreamEvent).publish(event)
            if result.ok or result.reason:
                break
            if invalid:
                reports.append(ProviderReport(provider.name, ok=False, error_type=INVALID_ANSWER, message=reason[:300]))
            self.reasons.append((provider.name, reason))
        if not result.ok and not result.reason:
            result.reason = self._reason()
        if reports or store is not None:
            finish = STEP_DEFAULTS["llm_finish"]
            await workflow.execute_local_activity(
                finish_llm_call,
                FinishInput(reports=reports, store=store),
                start_to_close_timeout=finish.start_to_close_timeout,
                retry_policy=finish.retry_policy,
            )
        result.requests = len(calls)
        result.attempts = [a for a in choice.skipped] + ledger.of_calls(calls)
        result.usage = total_usage(ledger.of_calls(calls))
        result.cost_usd = total_cost(ledger.of_calls(calls))
        return result

    async def _request(
        self, ledger: RunLedger, provider: ProviderPlan, prompt_key: str, repair: list[Message], calls: set[int]
    ) -> RequestOutput:
        ledger.requests += 1
        calls.add(ledger.requests)
        inp = RequestInput(
            provider=provider.name, prompt_key=prompt_key, tenant=self.tenant, call=ledger.requests, repair=repair,
            max_tokens=self.max_tokens, stream=self.stream is not None,
        )
        return await request(ledger, provider, inp, self.options)

    def _from_cache(self, prepared: Prepared) -> bool:
        hit = prepared.cached
        value, errors = validate_reply(self.output, hit.content, self.validate)
        context = set(self.cache.context_ids) if self.cache else set()
        if errors or (self.cites and not set(self.cites(value)) <= context):
            return False
        r = self.result
        r.ok, r.value, r.cache = True, value, CacheHit(hit.hit)
        r.model, r.provider = hit.model, hit.provider
        r.cache_source_workflow_id, r.cache_similarity = hit.source_workflow_id, hit.similarity
        return True

    def _cache_store(self, prepared: Prepared, reply: RequestOutput, value: BaseModel) -> CacheStore | None:
        if not prepared.plan.cache_enabled or self.cache is None:
            return None
        return CacheStore(
            tenant=self.tenant,
            scope=prepared.cache_scope,
            key=self.cache.key,
            context_ids=list(self.cache.context_ids),
            model=reply.model,
            provider=reply.provider,
            content=value.model_dump_json(),
            cited_ids=list(self.cites(value)) if self.cites else [],
            workflow_id=workflow.info().workflow_id,
            semantic=self.cache.semantic and prepared.plan.semantic_cache,
        )

    # --- outside a workflow ----------------------------------------------------------------

    async def in_process(self) -> LLMResult:
        from keel.activities._runtime import runtime

        settings = runtime().settings
        result = self.result
        result.providers = [p.name for p in settings.provider_chain]
        attempts: list[ProviderAttempt] = []
        request = 0
        for provider in settings.provider_chain:
            repair: list[Message] = []
            reason, done = "", False
            for _ in range(1 + self.max_repairs):
                if self._budget_spent(total_cost(attempts)):
                    break
                request += 1
                messages = [{"role": m.role, "content": m.content} for m in self.messages + repair]
                completion, failure = await request_in_process(
                    provider, messages, attempts, call=request, schema=self.schema,
                    max_tokens=self.max_tokens or settings.llm_max_tokens,
                )
                if completion is None:
                    reason = f"LLM failed: {type(failure).__name__}: {failure.message}"
                    break
                value, errors = validate_reply(self.output, completion.content, self.validate, lenient=True)
                if not errors and self.judge is not None:
                    errors = list(await self.judge(value))
                attempts[-1].outcome = AttemptOutcome.INVALID if errors else AttemptOutcome.ANSWERED
                result.model = completion.model
                if not errors:
                    result.ok, result.value, result.provider, result.errors = True, value, provider.name, []
                    done = True
                    break
                result.errors = errors
                reason = "invalid answer after repair: " + "; ".join(errors)
                repair = repair_messages(completion.content, errors)
            if done or result.reason:
                break
            self.reasons.append((provider.name, reason))
        if not result.ok and not result.reason:
            result.reason = self._reason()
        result.requests = request
        result.attempts = attempts
        result.usage, result.cost_usd = total_usage(attempts), total_cost(attempts)
        return result


async def request(ledger: RunLedger, provider: ProviderPlan, inp: RequestInput, options: StepOptions | None) -> RequestOutput:
    """One request (``keel.llm_request``) to ``provider`` on its own queue, Temporal retrying it
    with the provider's policy; every attempt lands in ``ledger``."""
    o = STEP_DEFAULTS["llm_request"].merged(options)
    # Bounds the wait for a slot on the provider's queue too (max_concurrency, rate limit).
    per_attempt = timedelta(seconds=provider.timeout_seconds + 15)
    try:
        reply: RequestOutput = await workflow.execute_activity(
            request_llm,
            inp,
            task_queue=o.task_queue or provider_task_queue(_deployment.current().task_queue, provider.name),
            start_to_close_timeout=o.start_to_close_timeout or per_attempt,
            schedule_to_close_timeout=o.schedule_to_close_timeout
            or provider.max_attempts * (per_attempt + timedelta(seconds=30)) + timedelta(seconds=60),
            retry_policy=o.retry_policy or llm_retry(provider),
        )
    except ActivityError as e:
        # The last attempt's record travels in the failure too, in case its signal was lost.
        if isinstance(e.cause, ApplicationError) and e.cause.details:
            ledger.record(value_to_type(ProviderAttempt, e.cause.details[0]))
        raise
    ledger.record(reply.record)
    return reply


async def request_in_process(
    provider, messages: list[dict[str, Any]], attempts: list[ProviderAttempt], *, call: int, schema: dict[str, Any] | None,
    max_tokens: int, tools: list[dict[str, Any]] | None = None,
):
    """One request outside a workflow, retried as ``keel.llm_request``'s policy would (backoff,
    ``Retry-After``, no retry of 4xx): ``(completion, None)`` or ``(None, the last error)``.
    Every attempt is appended to ``attempts`` (a reply as ``REPLIED``, for the caller to judge)."""
    from keel.activities.llm import attempt_record

    failure: LLMError | None = None
    for attempt in range(1, provider.max_attempts + 1):
        try:
            completion = await provider.client().complete(messages, json_schema=schema, max_tokens=max_tokens, tools=tools)
        except LLMError as e:
            failure = e
            attempts.append(attempt_record(provider, e, call=call, attempt=attempt))
            too_long = e.retry_after is not None and e.retry_after > provider.max_retry_after_seconds
            if not e.retryable or too_long or attempt == provider.max_attempts:
                break
            await asyncio.sleep(e.retry_after or LLM_BACKOFF.delay(attempt, random.random()))
            continue
        usage = Usage(completion.prompt_tokens, completion.completion_tokens)
        attempts.append(
            ProviderAttempt(
                provider=provider.name, model=completion.model, outcome=AttemptOutcome.REPLIED, usage=usage,
                cost_usd=provider.cost_usd(usage.prompt_tokens, usage.completion_tokens), call=call, attempt=attempt,
            )
        )
        return completion, None
    return None, failure


def run_usage() -> tuple[Usage, float, list[ProviderAttempt]]:
    """(usage, cost in USD, attempts) of every LLM call of the current workflow run so far."""
    ledger = run_ledger()
    return ledger.usage, ledger.cost_usd, ledger.attempts

