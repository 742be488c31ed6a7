"""Durable agents on a real Temporal dev server, with a scripted fake LLM on loopback that
speaks OpenAI's ``tool_calls`` and Anthropic's ``tool_use``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta

import pytest

from keel import ProviderConfig
from keel.agents import AgentStop
from keel.testing import FakeOpenAI, KeelTestEnv, Step
from tests.agent_app import ACTIVITIES, BIG, WORKFLOWS, AgentTask, RefundBatchAgent, SupportAgent
from tests.conftest import start_env
from tests.test_crash_recovery import _dead, wait_until

FINAL = json.dumps({"summary": "refunded order 7", "refunded": 12.5})


@pytest.fixture
def keel_env(temporal_settings):
    """A worker with these tests' workflows and tools on the session's dev server."""

    def env(workflows, activities, *, fake_llm=None, **settings):
        return KeelTestEnv(workflows, activities, address=temporal_settings.temporal_address, fake_llm=fake_llm, **settings)

    return env


@pytest.fixture
def keel_fake_llm(fake_llm):
    return fake_llm


def effects(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


async def history_size(client, workflow_id: str) -> int:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(e.ByteSize() for e in history.events)


async def test_agent_calls_tools_by_reference_and_answers(keel_env, keel_fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_TEST_EFFECTS", str(tmp_path / "effects.log"))
    async with keel_env(WORKFLOWS, ACTIVITIES, fake_llm=keel_fake_llm) as env:
        keel_fake_llm.script(
            Step.tool_calls(("lookup", {"order": "7"})),
            Step.tool_calls(("refund", {"order": "7", "amount": 12.5}), ("lookup", {"order": "8"})),
            Step.ok(FINAL),
        )
        first = len(keel_fake_llm.requests)
        wid = "agent-tools-1"
        result = await env.execute(SupportAgent.run, AgentTask("acme", "Refund order 7"), id=wid)
        requests = keel_fake_llm.requests[first:]

    assert result.ok and result.stop is AgentStop.ANSWERED, result.reason
    assert result.value.refunded == 12.5 and result.turns == 3
    assert [c.name for c in result.tool_calls] == ["lookup", "refund", "lookup"]
    assert all(c.error is None for c in result.tool_calls) and result.tool_calls[0].size == BIG
    assert len(result.attempts) == 3 and result.usage.prompt_tokens > 0
    # The model saw the tools and, the next turn, the whole 10 KB result it asked for.
    assert {t["function"]["name"] for t in requests[0]["tools"]} == {"lookup", "refund"}
    tool_msgs = [m for m in requests[1]["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 1 and len(tool_msgs[0]["content"]) == BIG
    assert requests[1]["messages"][-2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert [m["role"] for m in requests[2]["messages"]][-3:] == ["assistant", "tool", "tool"]
    # The side effect happened once, keyed by the agent's workflow and the call.
    done = effects(tmp_path / "effects.log")
    assert len(done) == 1 and done[0][1:] == ["7", "12.5"] and done[0][0].startswith(result.workflow_id)
    # Results travel by reference: the agent's history holds no tool result text.
    assert await history_size(env.client, result.workflow_id) < 20_000


async def test_agent_over_anthropic_tool_use(keel_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_TEST_EFFECTS", str(tmp_path / "effects.log"))
    with FakeOpenAI() as claude:
        provider = ProviderConfig(name="claude", kind="anthropic", base_url=claude.base_url, model="claude-fake")
        async with keel_env(WORKFLOWS, ACTIVITIES, fake_llm=claude, providers=[provider]) as env:
            claude.script(Step.tool_calls(("lookup", {"order": "9"})), Step.answer())
            result = await env.execute(SupportAgent.run, AgentTask("acme", "What about order 9?"))
        body = claude.requests[1]
    assert result.ok, result.reason
    assert [c.name for c in result.tool_calls] == ["lookup"] and result.provider == "claude"
    assert {t["name"] for t in body["tools"]} == {"lookup", "refund", "keel_output"}
    assert body["tool_choice"] == {"type": "any"}
    use = body["messages"][-2]["content"][0]
    answer = body["messages"][-1]["content"][0]
    assert use["type"] == "tool_use" and use["input"] == {"order": "9"}
    assert answer["type"] == "tool_result" and answer["tool_use_id"] == use["id"] and len(answer["content"]) == BIG


async def test_agent_stops_at_its_turn_limit_and_repairs_invalid_answers(keel_env, keel_fake_llm):
    async with keel_env(WORKFLOWS, ACTIVITIES, fake_llm=keel_fake_llm) as env:
        keel_fake_llm.script(*[Step.tool_calls(("lookup", {"order": str(i)})) for i in range(3)])
        stopped = await env.execute(SupportAgent.run, AgentTask("acme", "loop", max_turns=3))
        keel_fake_llm.script(Step.tool_calls(("nope", {})), Step.ok('{"summary": 1}'), Step.ok(FINAL))
        repaired = await env.execute(SupportAgent.run, AgentTask("acme", "repair"))
    assert not stopped.ok and stopped.stop is AgentStop.MAX_TURNS and stopped.turns == 3
    assert repaired.ok and repaired.turns == 3, repaired.reason
    assert repaired.tool_calls[0].error.startswith("no tool named 'nope'")


async def test_long_sessions_continue_as_new_with_small_histories(keel_env, keel_fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEL_TEST_EFFECTS", str(tmp_path / "effects.log"))
    async with keel_env(WORKFLOWS, ACTIVITIES, fake_llm=keel_fake_llm) as env:
        keel_fake_llm.script(*[Step.tool_calls(("lookup", {"order": str(i)})) for i in range(12)], Step.ok(FINAL))
        result = await env.execute(SupportAgent.run, AgentTask("acme", "long", turns_per_run=5))
        runs = [e async for e in env.client.list_workflows(f'WorkflowId = "{result.workflow_id}"')]
    assert result.ok and result.turns == 13 and len(result.tool_calls) == 12
    assert len(runs) == 3  # 5 + 5 + 3 turns
    assert len(result.attempts) == 13 and len({a.call for a in result.attempts}) == 13


async def test_killing_the_worker_mid_agent_runs_every_side_effect_once(tmp_path_factory, temporal_settings, fake_llm, monkeypatch):
    n = 12
    log = tmp_path_factory.mktemp("agent-crash") / "effects.log"
    monkeypatch.setenv("KEEL_TEST_EFFECTS", str(log))

    def model(body: dict) -> Step:  # a function of the conversation: retried requests stay in step
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        if done < n:
            return Step.tool_calls(("slow_refund", {"order": str(done), "amount": 1.0}))
        return Step.ok(json.dumps({"summary": f"{n} refunds", "refunded": float(n)}))

    fake_llm.responder = model
    env = await start_env(
        tmp_path_factory.mktemp("agent-crash-env"), temporal_settings, "agentcrash", workers=0,
        llm_base_url=fake_llm.base_url, llm_start_local=False, llm_timeout_seconds=5,
    )
    try:
        env.stack.up(workers=1, apps=["tests.agent_app"], say=lambda _: None)
        handle = await env.client.start_workflow(
            RefundBatchAgent.run, AgentTask("acme", "refund orders 0-11", max_turns=30), id="agent-crash",
            task_queue=env.settings.task_queue, execution_timeout=timedelta(minutes=5),
        )

        async def some_refunds() -> bool:
            return len(effects(log)) >= 4

        await wait_until(some_refunds, 120, "4 refunds")
        assert len(effects(log)) < n, "the agent finished before the crash could be injected"
        victim = next(p for p in env.stack.running() if p.role == "worker")
        os.kill(victim.pid, signal.SIGKILL)
        await wait_until(lambda: _dead(env, victim), 10, "the killed worker to disappear")
        env.stack.up(workers=1, apps=["tests.agent_app"], say=lambda _: None)
        result = await asyncio.wait_for(handle.result(), timeout=240)
    finally:
        env.stack.down(say=lambda _: None)
    assert result.ok, result.reason
    assert [c.arguments for c in result.tool_calls] == [json.dumps({"order": str(i), "amount": 1.0}) for i in range(n)]
    orders = [row[1] for row in effects(log)]
    assert sorted(orders, key=int) == [str(i) for i in range(n)]  # each refund exactly once


def test_bound_tool_parameters_come_from_the_run_not_the_model():
    from keel.agents import ToolCall, tool
    from keel.agents.tools import parse_arguments

    @tool
    def notes(query: str, tenant: str, idempotency_key: str) -> str:
        """Search the tenant's notes."""
        return f"{tenant}:{query}"

    assert set(notes.keel_tool.parameters["properties"]) == {"query"}
    call = ToolCall("c1", "notes", json.dumps({"query": "tides", "tenant": "other"}), tenant="acme", idempotency_key="k1")
    assert parse_arguments(notes.keel_tool_impl, call) == {"query": "tides", "tenant": "acme", "idempotency_key": "k1"}
