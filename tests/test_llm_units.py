"""The LLM-call policies and adapters without Temporal: breaker, budgets, chain choice, retry
delays, provider settings, and the Anthropic adapter against the fake server's /v1/messages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from keel import errors
from keel.llm import prompts as answering
from keel.config import KeelSettings
from keel.llm.types import AttemptOutcome, DecisionKind, HealthReport, LLMPlan, ProviderHealthState, ProviderPlan
from keel.llm.clients import AnthropicClient
from keel.llm.policy import INVALID_ANSWER, budget_period, choose_chain, record_health
from keel.llm.providers import ProviderConfig, ProviderKind
from keel.stack import settings_env
from keel.testing.fake_openai import FakeOpenAI, Step

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
FAIL = HealthReport(ok=False, error_type="LLMUnavailable", breaker_failures=3, breaker_cooldown_seconds=30)

# --- circuit breaker ------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_a_success_closes_it():
    state = ProviderHealthState("p")
    for _ in range(2):
        state = record_health(state, FAIL, NOW)
    assert state.open_until is None and state.consecutive_failures == 2
    state = record_health(state, FAIL, NOW)
    assert state.open_until == NOW + timedelta(seconds=30) and state.times_opened == 1
    # After the cooldown one more failure re-opens it at once (half-open)...
    later = NOW + timedelta(seconds=31)
    state = record_health(state, FAIL, later)
    assert state.open_until == later + timedelta(seconds=30) and state.times_opened == 2
    # ...and a success closes it.
    state = record_health(state, HealthReport(ok=True), later)
    assert state.open_until is None and state.consecutive_failures == 0


def test_a_long_retry_after_opens_the_breaker_until_then():
    report = HealthReport(ok=False, error_type="LLMRateLimited", retry_after_seconds=120, max_retry_after_seconds=30)
    state = record_health(ProviderHealthState("p"), report, NOW)
    assert state.open_until == NOW + timedelta(seconds=120)
    short = HealthReport(ok=False, error_type="LLMRateLimited", retry_after_seconds=2, max_retry_after_seconds=30)
    assert record_health(ProviderHealthState("p"), short, NOW).open_until is None


def test_replies_still_invalid_after_the_repair_count_like_failures():
    drift = HealthReport(ok=False, error_type=INVALID_ANSWER, breaker_failures=2)
    state = record_health(record_health(ProviderHealthState("p"), drift, NOW), drift, NOW)
    assert state.open_until is not None and state.last_error.startswith("InvalidAnswer")


def test_request_errors_say_nothing_about_a_providers_health():
    state = ProviderHealthState("p")
    for _ in range(10):
        state = record_health(state, HealthReport(ok=False, error_type="LLMRequestRejected", breaker_failures=1), NOW)
    assert state == ProviderHealthState("p")


# --- chain choice and budgets ---------------------------------------------------------------------


def plan(*providers: ProviderPlan, spent: float = 0.0, budget: float | None = None) -> LLMPlan:
    return LLMPlan(providers=list(providers), period="2026-11", tenant_spent_usd=spent, tenant_budget_usd=budget)


def provider(name: str, *, cheap: bool = False, open_until: datetime | None = None) -> ProviderPlan:
    return ProviderPlan(name, f"{name}-model", 3, 10.0, cheap, 0.01, 0.02, open_until=open_until)


def test_the_chain_is_the_configured_order_within_budget():
    choice = choose_chain(plan(provider("a"), provider("b", cheap=True), spent=1, budget=2), NOW)
    assert [p.name for p in choice.providers] == ["a", "b"] and not choice.decisions and not choice.refused


def test_an_exhausted_tenant_budget_switches_to_the_budget_providers():
    choice = choose_chain(plan(provider("a"), provider("b", cheap=True), spent=2, budget=2), NOW)
    assert [p.name for p in choice.providers] == ["b"]
    assert [d.kind for d in choice.decisions] == [DecisionKind.TENANT_BUDGET_EXHAUSTED]


def test_an_exhausted_tenant_budget_without_a_budget_provider_refuses():
    choice = choose_chain(plan(provider("a"), spent=3, budget=2), NOW)
    assert choice.providers == [] and "no budget_fallback provider" in choice.refused


def test_providers_with_an_open_circuit_are_skipped_and_recorded():
    choice = choose_chain(plan(provider("a", open_until=NOW + timedelta(seconds=5)), provider("b")), NOW)
    assert [p.name for p in choice.providers] == ["b"]
    assert [(s.provider, s.outcome, s.error_type) for s in choice.skipped] == [("a", AttemptOutcome.SKIPPED, "CircuitOpen")]
    expired = choose_chain(plan(provider("a", open_until=NOW - timedelta(seconds=1))), NOW)
    assert [p.name for p in expired.providers] == ["a"]


def test_budget_periods():
    assert budget_period(NOW, "month") == "2026-11" and budget_period(NOW, "day") == "2026-11-22"
    with pytest.raises(ValueError, match="allowed: day, month"):
        budget_period(NOW, "week")


# --- retry delays ---------------------------------------------------------------------------------


def test_outages_back_off_exponentially_with_jitter():
    err = errors.LLMUnavailable("503")
    delays = [errors.to_application_error(err, attempt=n).next_retry_delay.total_seconds() for n in (1, 2, 3, 10)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4 and 15 <= delays[3] <= 30
    assert errors.LLM_BACKOFF.delay(3, 0.0) == 2.0 and errors.LLM_BACKOFF.delay(3, 0.999) < 4.0


def test_retry_after_wins_and_a_too_long_one_is_not_waited_for():
    err = errors.LLMRateLimited("429", retry_after=7)
    assert errors.to_application_error(err, attempt=1, max_retry_after=30).next_retry_delay == timedelta(seconds=7)
    long = errors.to_application_error(errors.LLMRateLimited("429", retry_after=120), attempt=1, max_retry_after=30)
    assert long.non_retryable and long.next_retry_delay is None and "not waiting" in long.message
    assert errors.to_application_error(errors.LLMRequestRejected("401"), attempt=1).non_retryable
    assert "BudgetExceeded" in errors.NON_RETRYABLE


# --- provider settings ----------------------------------------------------------------------------


def test_the_llm_settings_are_a_one_provider_chain(monkeypatch):
    monkeypatch.setenv("KEEL_LLM_BASE_URL", "https://api.example.com/v1")
    monkeypatch.setenv("KEEL_LLM_MODEL", "m1")
    monkeypatch.setenv("KEEL_LLM_API_KEY", "sk-1")
    monkeypatch.setenv("KEEL_LLM_TIMEOUT_SECONDS", "7")
    [p] = KeelSettings().provider_chain
    assert (p.name, p.base_url, p.model, p.api_key) == ("default", "https://api.example.com/v1", "m1", "sk-1")
    assert p.timeout_seconds == 7
    assert p.response_format.value == "json_schema"
    local = KeelSettings(llm_base_url="http://127.0.0.1:8088/v1")
    assert local.local_llm_provider is not None and local.provider_chain[0].response_format.value == "json_object"


def test_a_chain_from_json_round_trips_to_child_processes(monkeypatch):
    chain = [
        {"name": "openai", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key_env": "OPENAI_KEY",
         "price_prompt_per_1k": 0.00015},
        {"name": "claude", "kind": "anthropic", "base_url": "https://api.anthropic.com", "model": "haiku",
         "budget_fallback": True},
    ]
    monkeypatch.setenv("KEEL_PROVIDERS", json.dumps(chain))
    monkeypatch.setenv("KEEL_TENANT_BUDGETS", '{"acme": 5}')
    monkeypatch.setenv("OPENAI_KEY", "sk-from-env")
    settings = KeelSettings()
    assert [p.name for p in settings.provider_chain] == ["openai", "claude"]
    assert settings.provider("claude").kind is ProviderKind.ANTHROPIC and settings.provider("openai").key() == "sk-from-env"
    assert settings.tenant_budget("acme") == 5 and settings.tenant_budget("other") is None
    for name, value in settings_env(settings).items():  # what `keel up` hands its workers
        monkeypatch.setenv(name, value)
    assert KeelSettings().providers == settings.providers
    with pytest.raises(ValueError, match="configured: openai, claude"):
        settings.provider("nope")


def test_provider_names_must_be_usable_as_queue_names():
    with pytest.raises(ValueError):
        ProviderConfig(name="has space", base_url="http://x", model="m")


def test_cost_counts_prompt_and_completion_prices():
    p = ProviderConfig(name="p", base_url="http://x", model="m", price_prompt_per_1k=0.5, price_completion_per_1k=1.5)
    assert p.cost_usd(1000, 2000) == pytest.approx(3.5)


# --- the Anthropic adapter, over real HTTP ----------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic():
    with FakeOpenAI(model="claude-test") as server:
        yield server


MESSAGES = [{"role": "system", "content": "Answer from sources."}, {"role": "user", "content": "What is the motto?"}]


async def test_anthropic_messages_request_and_tool_output(anthropic):
    client = AnthropicClient(anthropic.base_url, "claude-test", api_key="sk-ant", timeout=5)
    completion = await client.complete(MESSAGES, json_schema=answering.answer_schema(2))
    assert json.loads(completion.content) == {"answer": "What is the motto?", "citations": ["S1"]}
    assert completion.prompt_tokens == 7 and completion.completion_tokens > 0
    sent = anthropic.requests[-1]
    assert sent["system"] == "Answer from sources." and sent["messages"] == [MESSAGES[1]]
    assert sent["tools"][0]["input_schema"] == answering.answer_schema(2)


@pytest.mark.parametrize(
    "step,error",
    [
        (Step.rate_limited("9"), errors.LLMRateLimited),
        (Step.server_error(529), errors.LLMUnavailable),  # overloaded
        (Step.client_error(401), errors.LLMRequestRejected),
        (Step.malformed(), errors.LLMBadOutput),
    ],
)
async def test_anthropic_failures_are_classified(anthropic, step, error):
    anthropic.script(step)
    with pytest.raises(error) as info:
        await AnthropicClient(anthropic.base_url, "claude-test", timeout=5).complete(MESSAGES)
    if error is errors.LLMRateLimited:
        assert info.value.retry_after == 9.0
    if error is errors.LLMBadOutput:  # a 200 the provider billed: the prompt is counted
        assert info.value.prompt_tokens > 0 and info.value.usage_estimated
