"""Walking a run's provider chain (deterministic: it runs inside ``AnswerQuestion``).

Per provider: one ``generate_answer`` call with the provider's own retry policy (Temporal
retries 429s after ``Retry-After`` and outages after a jittered backoff), then validation and
one repair re-ask. The chain moves to the next provider when the call fails for good (retries
spent, a non-retryable 4xx, a ``Retry-After`` too long to wait) or when the provider's reply
is still invalid after the repair, which also counts towards the provider's circuit breaker.
There is no retry loop here: each step is one activity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.answer import validate_answer
    from activities.llm import generate_answer, report_provider_health
    from keel import llm_policy
    from keel.llm_policy import INVALID_ANSWER
    from keel.contracts import (
        AskInput,
        AttemptOutcome,
        DecisionKind,
        GenerateInput,
        GenerateOutput,
        PolicyDecision,
        ProviderAttempt,
        ProviderPlan,
        ProviderReportInput,
        RetrievedChunk,
        Usage,
        ValidateInput,
        ValidateOutput,
    )
    from keel.errors import NON_RETRYABLE
    from keel.providers import provider_task_queue
    from workflows.ingest import failure_reason

VALIDATE_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE)
REPORT_RETRY = RetryPolicy(maximum_attempts=3)  # the breaker is advice: never hold a run for it


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


@dataclass
class ChainAnswer:
    validation: ValidateOutput
    provider: str = ""
    model: str = ""  # the model of the last reply, valid or not
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (provider, why it did not answer)

    @property
    def reason(self) -> str:
        if len(self.reasons) == 1:
            return self.reasons[0][1]
        return "; ".join(f"{name}: {why}" for name, why in self.reasons)


class ProviderChain:
    """The attempts of one run: every one reported (including Temporal's retries), and the
    decisions taken on the way."""

    def __init__(self) -> None:
        self._attempts: dict[tuple[int, int], ProviderAttempt] = {}
        self.skipped: list[ProviderAttempt] = []
        self.decisions: list[PolicyDecision] = []
        self.calls = 0

    def record(self, attempt: ProviderAttempt) -> None:
        # The same attempt arrives twice (its own signal, then the call's result): keep one.
        self._attempts.setdefault((attempt.call, attempt.attempt), attempt)

    @property
    def attempts(self) -> list[ProviderAttempt]:
        return self.skipped + sorted(self._attempts.values(), key=lambda a: (a.call, a.attempt))

    @property
    def usage(self) -> Usage:
        tried = self._attempts.values()
        return Usage(sum(a.usage.prompt_tokens for a in tried), sum(a.usage.completion_tokens for a in tried))

    @property
    def cost_usd(self) -> float:
        return float(round(sum(a.cost_usd for a in self._attempts.values()), 8))

    async def answer(
        self, inp: AskInput, question: str, chunks: list[RetrievedChunk], chain: list[ProviderPlan]
    ) -> ChainAnswer:
        out = ChainAnswer(validation=ValidateOutput(valid=False))
        for provider in chain:
            request = GenerateInput(
                question=question,
                chunks=chunks,
                prompt_version=inp.prompt_version,
                provider=provider.name,
                tenant=inp.tenant,
                entity_task_queue=workflow.info().task_queue,
            )
            reason, invalid = "", False
            for _ in range(2):  # the answer, then one repair re-ask with the validation errors
                if not llm_policy.run_budget_left(inp.max_cost_usd, self.cost_usd):
                    detail = f"run spent ${self.cost_usd:.6f} of its ${inp.max_cost_usd:.6f} budget: no further LLM call"
                    self.decisions.append(PolicyDecision(DecisionKind.RUN_BUDGET_EXHAUSTED, detail))
                    out.reasons.append((provider.name, detail))
                    return out
                try:
                    generated = await self._generate(request, provider)
                except ActivityError as e:
                    reason, invalid = "LLM failed: {}: {}".format(*failure_reason(e)), False
                    break
                out.model = generated.model
                validation = await workflow.execute_activity(
                    validate_answer,
                    ValidateInput(content=generated.content, chunks=chunks),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=VALIDATE_RETRY,
                )
                self._mark(generated, AttemptOutcome.ANSWERED if validation.valid else AttemptOutcome.INVALID)
                if validation.valid:
                    out.validation, out.provider = validation, provider.name
                    # Only a provider known to have failed hears about it: the happy path adds nothing.
                    if provider.consecutive_failures or self._failed(provider.name):
                        await self._report(ProviderReportInput(provider.name, workflow.info().task_queue, ok=True))
                    return out
                reason, invalid = "invalid answer after repair: " + "; ".join(validation.errors), True
                request = dataclasses.replace(request, repair_errors=validation.errors, previous_output=generated.content)
            if invalid:
                await self._report(
                    ProviderReportInput(
                        provider.name, workflow.info().task_queue, ok=False, error_type=INVALID_ANSWER, message=reason
                    )
                )
            out.reasons.append((provider.name, reason))
        return out

    def _failed(self, provider: str) -> bool:
        return any(a.provider == provider and a.outcome is AttemptOutcome.FAILED for a in self._attempts.values())

    async def _report(self, report: ProviderReportInput) -> None:
        try:
            await workflow.execute_activity(
                report_provider_health, report, start_to_close_timeout=timedelta(seconds=30), retry_policy=REPORT_RETRY
            )
        except ActivityError:
            workflow.logger.warning("could not report %s's health", report.provider)

    async def _generate(self, request: GenerateInput, provider: ProviderPlan) -> GenerateOutput:
        self.calls += 1
        request = dataclasses.replace(request, call=self.calls)
        # Bounds the wait for a slot on the provider's queue too (max_concurrency, rate limit).
        per_attempt = provider.timeout_seconds + 15
        try:
            generated = await workflow.execute_activity(
                generate_answer,
                request,
                task_queue=provider_task_queue(workflow.info().task_queue, provider.name),
                start_to_close_timeout=timedelta(seconds=per_attempt),
                schedule_to_close_timeout=timedelta(seconds=provider.max_attempts * (per_attempt + 30) + 60),
                retry_policy=llm_retry(provider),
            )
        except ActivityError as e:
            # The last attempt's record travels in the failure too, in case its signal was lost.
            if isinstance(e.cause, ApplicationError) and e.cause.details:
                self.record(value_to_type(ProviderAttempt, e.cause.details[0]))
            raise
        if generated.record is not None:
            self.record(generated.record)
        return generated

    def _mark(self, generated: GenerateOutput, outcome: AttemptOutcome) -> None:
        if generated.record is not None:
            self._attempts[(generated.record.call, generated.record.attempt)].outcome = outcome
