"""A user's agent workflow and tools, for tests/test_agents.py (in-process worker and the crash
test's worker processes, ``python -m keel.worker --app tests.agent_app``).

``refund`` has a side effect: it appends one line per refund to ``$KEEL_TEST_EFFECTS`` and does
it once per idempotency key, so a call retried after a crash does not refund twice.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.agents import AgentLimits, AgentResult, run_agent, tool

BIG = 10_000


@tool
def lookup(order: str) -> str:
    """The order's record (long: about 10 KB)."""
    return (f"order {order}: status shipped; " * 400)[:BIG]


@tool
def refund(order: str, amount: float, idempotency_key: str) -> str:
    """Refund an amount to an order's payment method."""
    path = os.environ.get("KEEL_TEST_EFFECTS", "/tmp/keel-test-effects.log")
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        if any(line.split("\t", 1)[0] == idempotency_key for line in f.read().splitlines()):
            return f"refund for {order} already done"
        f.write(f"{idempotency_key}\t{order}\t{amount}\n")
    return f"refunded {amount} to {order}"


class Resolution(BaseModel):
    summary: str
    refunded: float


@dataclass
class AgentTask:
    tenant: str
    request: str
    max_turns: int = 20
    turns_per_run: int = 100
    budget_usd: float | None = None


@workflow.defn
class SupportAgent:
    @workflow.run
    async def run(self, task: AgentTask) -> AgentResult[Resolution]:
        return await run_agent(
            task.request,
            Resolution,
            tenant=task.tenant,
            tools=[lookup, refund],
            system="You resolve support requests with the tools you have.",
            limits=AgentLimits(max_turns=task.max_turns, turns_per_run=task.turns_per_run, budget_usd=task.budget_usd),
        )


WORKFLOWS = [SupportAgent]
ACTIVITIES = [lookup, refund]


@tool(start_to_close=timedelta(seconds=10))
def slow_refund(order: str, amount: float, idempotency_key: str) -> str:
    """Refund an amount to an order (takes a moment: a payment provider's API)."""
    time.sleep(0.4)
    return refund.fn(order, amount, idempotency_key)


@workflow.defn
class RefundBatchAgent:
    """The crash test's agent: one slow refund per turn."""

    @workflow.run
    async def run(self, task: AgentTask) -> AgentResult[Resolution]:
        return await run_agent(task.request, Resolution, tenant=task.tenant, tools=[slow_refund], limits=AgentLimits(max_turns=task.max_turns))


WORKFLOWS.append(RefundBatchAgent)
ACTIVITIES.append(slow_refund)
