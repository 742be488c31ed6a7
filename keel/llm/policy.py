"""The provider chain's policies as pure functions: circuit breaker, budgets, chain choice.

No I/O and no clock of their own (the caller passes ``now``), so workflows call them directly
and tests check them without Temporal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from keel.llm.types import (
    AttemptOutcome,
    DecisionKind,
    HealthReport,
    LLMPlan,
    PolicyDecision,
    ProviderAttempt,
    ProviderHealthState,
    ProviderPlan,
)

# A reply still invalid after the repair re-ask: a drifting model, reported by the run.
INVALID_ANSWER = "InvalidAnswer"
# Errors that say the provider, not the request, is in trouble: they count towards its breaker.
BREAKER_ERRORS = frozenset({"LLMUnavailable", "LLMRateLimited", "LLMBadOutput", INVALID_ANSWER})


def record_health(state: ProviderHealthState, report: HealthReport, now: datetime) -> ProviderHealthState:
    """The breaker's next state after one attempt.

    A valid answer closes it. A retryable failure, or a reply still invalid after the repair
    re-ask, counts; ``breaker_failures`` of them in a row open it for
    ``breaker_cooldown_seconds`` (after which runs try it again: a failure then re-opens it at
    once, since the count is still over the threshold). A 429 whose
    ``Retry-After`` is longer than the provider's ``max_retry_after_seconds`` opens it until
    then. Request errors (400/401/403/404/422) say nothing about the provider's health.
    """
    if report.ok:
        return replace(state, consecutive_failures=0, open_until=None, successes=state.successes + 1)
    if report.error_type not in BREAKER_ERRORS:
        return state
    failures = state.consecutive_failures + 1
    until = state.open_until
    if report.retry_after_seconds and report.retry_after_seconds > report.max_retry_after_seconds:
        until = _later(until, now + timedelta(seconds=report.retry_after_seconds))
    if failures >= report.breaker_failures:
        until = _later(until, now + timedelta(seconds=report.breaker_cooldown_seconds))
    opened = until is not None and (state.open_until is None or state.open_until <= now) and until > now
    return replace(
        state,
        consecutive_failures=failures,
        open_until=until,
        last_error=f"{report.error_type}: {report.message or ''}"[:300],
        failures=state.failures + 1,
        times_opened=state.times_opened + (1 if opened else 0),
    )


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def budget_period(now: datetime, period: str) -> str:
    """The key of the budget period containing ``now`` (UTC): "2026-11" or "2026-11-22"."""
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "month":
        return now.strftime("%Y-%m")
    raise ValueError(f"unknown budget period {period!r}; allowed: day, month")


@dataclass
class ChainChoice:
    """The providers a run will try, in order, and why others are left out."""

    providers: list[ProviderPlan]
    skipped: list[ProviderAttempt]
    decisions: list[PolicyDecision]
    refused: str | None = None  # over budget and no budget provider: the run must fail typed


def choose_chain(plan: LLMPlan, now: datetime) -> ChainChoice:
    decisions: list[PolicyDecision] = []
    candidates = plan.providers
    budget = plan.tenant_budget_usd
    if budget is not None and plan.tenant_spent_usd >= budget:
        spent = f"spent ${plan.tenant_spent_usd:.6f} of ${budget:.6f} in {plan.period}"
        candidates = [p for p in plan.providers if p.budget_fallback]
        if not candidates:
            refused = f"tenant budget exhausted ({spent}) and no budget_fallback provider is configured"
            return ChainChoice([], [], decisions, refused=refused)
        decisions.append(
            PolicyDecision(
                DecisionKind.TENANT_BUDGET_EXHAUSTED,
                f"tenant budget exhausted ({spent}): using {', '.join(p.name for p in candidates)}",
            )
        )
    chain, skipped = [], []
    for p in candidates:
        if p.open_until is not None and p.open_until > now:
            skipped.append(
                ProviderAttempt(
                    provider=p.name,
                    model=p.model,
                    outcome=AttemptOutcome.SKIPPED,
                    error_type="CircuitOpen",
                    message=f"circuit open until {p.open_until.isoformat()} after {p.consecutive_failures} failures",
                )
            )
            detail = f"{p.name} skipped: circuit open until {p.open_until.isoformat()}"
            decisions.append(PolicyDecision(DecisionKind.CIRCUIT_OPEN, detail))
        else:
            chain.append(p)
    return ChainChoice(chain, skipped, decisions)


def run_budget_left(max_cost_usd: float | None, spent_usd: float) -> bool:
    return max_cost_usd is None or spent_usd < max_cost_usd
