"""The provider chain end to end: real Temporal, real workers, two fault-injecting providers on
loopback ("primary" speaks OpenAI's protocol, "fallback" Anthropic's)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timezone

import pytest
from temporalio.service import RPCError

from keel.llm.types import AttemptOutcome, DecisionKind, PeriodSpend, ProviderHealthState
from keel.llm.policy import budget_period
from keel.llm.providers import provider_health_id, tenant_budget_id
from keel.search_attributes import KEEL_COST_USD, KEEL_MODEL, KEEL_TENANT, KEEL_TOKENS
from keel.testing.fake_openai import Step
from tests.conftest import KeelEnv
from keel.streaming import follow
from keel.workflows import AnswerQuestion
from tests.llm_helpers import QUESTION, ask, ingest_history, reset_providers

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT = "chain"


@pytest.fixture(scope="module")
async def env(chain_keel: KeelEnv) -> KeelEnv:
    await ingest_history(chain_keel, [TENANT, "frugal"])
    return chain_keel


@pytest.fixture(autouse=True)
async def _fresh_providers(env, fake_providers):
    await reset_providers(env, fake_providers)
    yield


def outcomes(result, provider: str) -> list[tuple[AttemptOutcome, str | None]]:
    return [(a.outcome, a.error_type) for a in result.provider_attempts if a.provider == provider]


async def test_healthy_primary_answers_with_usage_cost_and_search_attributes(env, fake_providers):
    primary, fallback = fake_providers
    result, handle = await ask(env, TENANT)
    assert result.provider == "primary" and not result.degraded and result.citations
    assert outcomes(result, "primary") == [(AttemptOutcome.ANSWERED, None)]
    assert len(primary.requests) == 1 and fallback.requests == []
    [attempt] = result.provider_attempts
    assert attempt.usage.prompt_tokens > 0 and attempt.usage.completion_tokens > 0 and not attempt.usage_estimated
    assert result.cost_usd == pytest.approx(
        (attempt.usage.prompt_tokens * 0.01 + attempt.usage.completion_tokens * 0.03) / 1000
    )
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(KEEL_TENANT) == TENANT and attributes.get(KEEL_MODEL) == "primary-model"
    assert attributes.get(KEEL_COST_USD) == pytest.approx(result.cost_usd)
    assert attributes.get(KEEL_TOKENS) == result.usage.prompt_tokens + result.usage.completion_tokens


@pytest.mark.parametrize("fault", [Step.server_error(503), Step.hang(5), Step.reset()], ids=["503", "timeout", "reset"])
async def test_outage_falls_over_to_the_next_provider(env, fake_providers, fault):
    primary, fallback = fake_providers
    primary.script(fault, fault)  # both of primary's attempts (max_attempts=2)
    result, _ = await ask(env, TENANT)
    assert result.provider == "fallback" and not result.degraded, result.degraded_reason
    assert outcomes(result, "primary") == [(AttemptOutcome.FAILED, "LLMUnavailable")] * 2
    assert outcomes(result, "fallback") == [(AttemptOutcome.ANSWERED, None)]
    assert len(primary.requests) == 2 and len(fallback.requests) == 1
    # The Anthropic adapter: system prompt in its own field, JSON through a forced tool call.
    sent = fallback.requests[0]
    assert sent["system"] and sent["tool_choice"] == {"type": "tool", "name": "keel_output"}
    assert all(m["role"] != "system" for m in sent["messages"])


async def test_retry_after_is_honoured_before_the_retry(env, fake_providers):
    primary, fallback = fake_providers
    primary.script(Step.rate_limited("2"), Step.answer())
    result, _ = await ask(env, TENANT)
    assert result.provider == "primary" and fallback.requests == []
    assert outcomes(result, "primary") == [(AttemptOutcome.FAILED, "LLMRateLimited"), (AttemptOutcome.ANSWERED, None)]
    assert result.provider_attempts[0].retry_after_seconds == 2.0
    assert primary.arrivals[1] - primary.arrivals[0] >= 2.0


async def test_a_401_is_not_retried(env, fake_providers):
    primary, fallback = fake_providers
    primary.script(Step.client_error(401))
    result, _ = await ask(env, TENANT)
    assert len(primary.requests) == 1  # one request, no retry storm
    assert outcomes(result, "primary") == [(AttemptOutcome.REJECTED, "LLMRequestRejected")]
    assert "401" in result.provider_attempts[0].message
    # A rejected key is this provider's problem: the next provider answers.
    assert result.provider == "fallback" and not result.degraded, (result.answer, result.degraded_reason)


async def test_token_usage_of_failed_attempts_is_counted(env, fake_providers):
    primary, fallback = fake_providers
    # Two replies that violate the schema (the answer and its repair), then a timeout-free fallback.
    primary.script(Step.schema_violation(), Step.schema_violation())
    before = await _spend(env, "chain")
    result, _ = await ask(env, TENANT)
    assert result.provider == "fallback" and not result.degraded, (result.answer, result.degraded_reason)
    invalid = [a for a in result.provider_attempts if a.provider == "primary"]
    assert [a.outcome for a in invalid] == [AttemptOutcome.INVALID] * 2
    assert all(a.usage.prompt_tokens > 0 and a.cost_usd > 0 for a in invalid)
    assert result.attempts == 3  # answer + repair on primary, answer on fallback
    assert result.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in result.provider_attempts)
    assert result.cost_usd == pytest.approx(sum(a.cost_usd for a in result.provider_attempts))
    assert result.cost_usd > sum(a.cost_usd for a in result.provider_attempts if a.provider == "fallback")
    # The tenant's ledger was charged for all three.
    after = await _spend(env, "chain")
    assert after.attempts - before.attempts == 3
    assert after.cost_usd - before.cost_usd == pytest.approx(result.cost_usd)


async def test_timeouts_count_an_estimated_prompt(env, fake_providers):
    primary, _ = fake_providers
    primary.script(Step.hang(5), Step.hang(5))
    result, _ = await ask(env, TENANT)
    timed_out = [a for a in result.provider_attempts if a.provider == "primary"]
    assert len(timed_out) == 2 and all(a.usage_estimated and a.usage.prompt_tokens > 0 and a.cost_usd > 0 for a in timed_out)


async def test_a_long_retry_after_moves_on_at_once_and_opens_the_circuit_for_other_runs(env, fake_providers):
    primary, fallback = fake_providers
    primary.script(Step.rate_limited("120"))  # longer than primary's max_retry_after_seconds (10)
    first, _ = await ask(env, TENANT)
    assert len(primary.requests) == 1 and first.provider == "fallback"
    second, _ = await ask(env, TENANT)
    assert len(primary.requests) == 1  # not even tried
    assert outcomes(second, "primary") == [(AttemptOutcome.SKIPPED, "CircuitOpen")]
    assert [d.kind for d in second.decisions] == [DecisionKind.CIRCUIT_OPEN]
    assert second.provider == "fallback"


async def test_the_circuit_opens_after_repeated_failures_and_closes_after_the_cooldown(env, fake_providers):
    primary, fallback = fake_providers
    primary.default = Step.server_error(500)
    for _ in range(2):  # 2 attempts each: 4 failures in a row, breaker_failures is 3
        result, _ = await ask(env, TENANT)
        assert result.provider == "fallback"
    tried = len(primary.requests)
    assert tried == 4
    # The state lives in Temporal, not in a worker: any worker (and this test) reads the same.
    health = await env.client.get_workflow_handle(provider_health_id(env.settings.task_queue, "primary")).query(
        "state", result_type=ProviderHealthState
    )
    assert health.consecutive_failures == 4 and health.open_until is not None and health.times_opened == 1
    skipped, _ = await ask(env, TENANT)
    assert len(primary.requests) == tried and skipped.provider == "fallback"

    primary.default = Step.answer()  # the provider recovers; after the cooldown (3 s) it is tried again
    await asyncio.sleep(3.5)
    recovered, _ = await ask(env, TENANT)
    assert recovered.provider == "primary" and len(primary.requests) == tried + 1


async def test_a_provider_whose_replies_stay_invalid_is_skipped_like_an_outage(env, fake_providers):
    primary, fallback = fake_providers
    primary.default = Step.schema_violation()  # a drifting model: every reply breaks the schema
    for _ in range(3):  # answer + repair each, then the fallback; breaker_failures is 3
        result, _ = await ask(env, TENANT)
        assert result.provider == "fallback" and not result.degraded, (result.answer, result.degraded_reason)
    assert len(primary.requests) == 6
    skipped, _ = await ask(env, TENANT)
    assert len(primary.requests) == 6
    assert outcomes(skipped, "primary") == [(AttemptOutcome.SKIPPED, "CircuitOpen")]


async def test_budget_exhaustion_switches_to_the_budget_provider(env, fake_providers):
    primary, fallback = fake_providers
    first, _ = await ask(env, "frugal")  # costs more than the tenant's $0.001
    assert first.provider == "primary" and first.cost_usd > 0.001 and first.decisions == []
    second, _ = await ask(env, "frugal")
    assert second.provider == "fallback" and not second.degraded
    assert [d.kind for d in second.decisions] == [DecisionKind.TENANT_BUDGET_EXHAUSTED]
    assert "fallback" in second.decisions[0].detail
    assert len(primary.requests) == 1  # the expensive provider was not asked again
    # Other tenants are not affected.
    other, _ = await ask(env, TENANT)
    assert other.provider == "primary" and other.decisions == []


async def test_run_budget_stops_further_llm_calls(env, fake_providers):
    primary, fallback = fake_providers
    primary.script(Step.schema_violation())
    result, _ = await ask(env, TENANT, max_cost_usd=0.000001)
    assert result.attempts == 1 and len(primary.requests) == 1 and fallback.requests == []
    assert result.degraded and [d.kind for d in result.decisions] == [DecisionKind.RUN_BUDGET_EXHAUSTED]
    assert "budget" in result.degraded_reason


async def _spend(env: KeelEnv, tenant: str) -> PeriodSpend:
    handle = env.client.get_workflow_handle(tenant_budget_id(env.settings.task_queue, tenant))
    period = budget_period(datetime.now(timezone.utc), env.settings.budget_period)
    try:
        return await handle.query("spend", period, result_type=PeriodSpend)
    except RPCError:  # nothing charged yet
        return PeriodSpend()


async def test_a_streamed_answer_marks_discarded_attempts_and_ends_with_the_result(env, fake_providers):
    primary, fallback = fake_providers
    primary.script(Step.stream_cut(4), Step.stream_cut(4))  # both attempts break mid-answer: fall over
    fallback.script(Step.schema_violation(), Step.answer())  # an invalid reply, then the repaired one
    inp = dataclasses.replace(env.settings.ask_input(TENANT, QUESTION), use_cache=False, stream=True)
    handle = await env.client.start_workflow(
        AnswerQuestion.run, inp, id=env.workflow_id("ask-stream"), task_queue=env.settings.index_task_queue
    )
    shown = await asyncio.wait_for(_collect(follow(env.client, handle.id)), 180)  # ends with the run
    result = await handle.result()

    assert result.provider == "fallback" and not result.degraded, (result.answer, result.degraded_reason)
    markers = [i for i, s in enumerate(shown) if s.marker]
    assert len(markers) == 3, shown  # two broken attempts, one invalid reply
    assert "".join(s.text for s in shown[: markers[0]]), "words streamed before the first break"
    assert "LLMUnavailable" in shown[markers[0]].marker and "invalid reply" in shown[markers[2]].marker
    assert "".join(s.text for s in shown[markers[-1] + 1:]) == result.answer


async def _collect(stream) -> list:
    return [s async for s in stream]


async def test_a_streamed_answer_arrives_token_by_token_in_one_attempt(env, fake_providers):
    primary, _ = fake_providers
    primary.script(Step.slow_stream(0.02))  # one word every 20 ms (under the 1.5 s timeout): several batches
    inp = dataclasses.replace(env.settings.ask_input(TENANT, QUESTION), use_cache=False, stream=True)
    handle = await env.client.start_workflow(
        AnswerQuestion.run, inp, id=env.workflow_id("ask-stream"), task_queue=env.settings.index_task_queue
    )
    shown = await asyncio.wait_for(_collect(follow(env.client, handle.id)), 120)
    result = await handle.result()
    assert result.provider == "primary" and len(result.provider_attempts) == 1, result.provider_attempts
    assert not any(s.marker for s in shown) and len([s for s in shown if s.text]) > 1
    assert "".join(s.text for s in shown) == result.answer
