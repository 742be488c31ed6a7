"""The refund agent on a real Temporal dev server: a scripted fake LLM drafts, the tests decide
the approval from code (``keel.approvals.decide``, what ``keel approve`` does), and the ledger
file shows what was paid."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Replayer

from keel import DecisionRejected, KeelPlugin
from keel.approvals import decide, query_pending
from keel.testing import Step
from workflows import APPROVAL_ID, WORKFLOWS, ExecuteRefund, HandleRefundRequest, RefundRequest, execute_refund

TENANT = "acme"
MESSAGE = "Hi, my card was charged twice for order 1042 (the rain jacket). Please refund the extra charge."
DRAFT = {"order": "1042", "amount": 120.0, "reason": "duplicate charge"}
# A workflow task that keeps failing is retried, not failed: without a limit a broken workflow
# would hang the test instead of failing it.
TIMEOUT = timedelta(minutes=2)
UPDATES = (EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED)


def script_agent(fake) -> None:
    """Look the order up, check the refund with draft_refund, answer the draft."""
    fake.script(
        Step.tool_calls(("lookup_order", {"order": "1042"})),
        Step.tool_calls(("draft_refund", DRAFT)),
        Step.ok(json.dumps(DRAFT)),
    )


async def start(env, **request):
    return await env.client.start_workflow(
        HandleRefundRequest.run, RefundRequest(TENANT, MESSAGE, **request), id=f"refund-{uuid.uuid4().hex[:8]}",
        task_queue=env.task_queue, execution_timeout=TIMEOUT,
    )


async def wait_pending(client, workflow_id: str, timeout: float = 30):
    """The run's one pending approval, once the agent has drafted and the run waits for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            pending = await query_pending(client, workflow_id)
        except Exception:
            if loop.time() > deadline:
                raise
            pending = []
        if pending:
            [approval] = pending
            return approval
        if loop.time() > deadline:
            raise AssertionError(f"{workflow_id} never waited for an approval")
        await asyncio.sleep(0.2)


async def update_events(handle) -> list:
    return [e.event_type async for e in handle.fetch_history_events() if e.event_type in UPDATES]


def paid(ledger) -> list[list[str]]:
    return [line.split("\t") for line in ledger.read_text().splitlines()] if ledger.exists() else []


async def test_an_approved_refund_is_paid_exactly_once(refund_env, keel_fake_llm, ledger):
    async with refund_env() as env:
        script_agent(keel_fake_llm)
        handle = await start(env)
        pending = await wait_pending(env.client, handle.id)
        assert paid(ledger) == []  # nothing is paid before the decision
        assert pending.approval_id == APPROVAL_ID and pending.request.approvers == ["finance"]
        assert pending.request.summary == "Refund 120.00 on order 1042: duplicate charge"
        assert pending.request.details["amount"] == "120.00" and pending.on_deadline == "reject"

        decision = await decide(env.client, handle.id, "approve", by="finance", comment="double charge confirmed")
        outcome = await asyncio.wait_for(handle.result(), 30)
        # The workflow code is deterministic: its history replays on it.
        replay = await Replayer(workflows=WORKFLOWS, plugins=[KeelPlugin(env.settings)]).replay_workflow(
            await handle.fetch_history(), raise_on_replay_failure=False
        )
        assert replay.replay_failure is None, replay.replay_failure

    assert decision.approved and outcome.decision == decision
    assert outcome.outcome == "refunded" and outcome.draft.amount == 120.0
    assert outcome.tool_calls == ["lookup_order", "draft_refund"] and outcome.agent_turns == 3
    key = f"refund/{handle.id}"
    assert outcome.receipt.idempotency_key == key and not outcome.receipt.already_done
    assert paid(ledger) == [[key, "1042", "120.00", "duplicate charge"]]
    # A retry of the step (same key) finds the refund paid and pays nothing.
    again = execute_refund(ExecuteRefund(key, "1042", 120.0, "duplicate charge"))
    assert again.already_done and len(paid(ledger)) == 1
    # The agent saw the order (what is still refundable) before drafting.
    lookup = next(m for m in keel_fake_llm.requests[1]["messages"] if m["role"] == "tool")
    assert json.loads(lookup["content"])["refundable"] == 240.0


async def test_a_rejected_refund_is_never_paid(refund_env, keel_fake_llm, ledger):
    async with refund_env() as env:
        script_agent(keel_fake_llm)
        handle = await start(env)
        await wait_pending(env.client, handle.id)
        await decide(env.client, handle.id, "reject", by="finance", comment="customer already got a voucher")
        outcome = await asyncio.wait_for(handle.result(), 30)

    assert outcome.outcome == "rejected" and outcome.receipt is None
    d = outcome.decision
    assert (d.approved, d.decided_by, d.comment) == (False, "finance", "customer already got a voucher")
    assert paid(ledger) == []


async def test_a_wrong_approver_is_refused_and_changes_nothing(refund_env, keel_fake_llm, ledger):
    async with refund_env() as env:
        script_agent(keel_fake_llm)
        handle = await start(env)
        await wait_pending(env.client, handle.id)

        with pytest.raises(DecisionRejected, match="'support-agent' may not decide approval 'refund' \\(approvers: finance\\)"):
            await decide(env.client, handle.id, "approve", by="support-agent")
        with pytest.raises(DecisionRejected, match="'pay_double' is not an allowed decision"):
            await decide(env.client, handle.id, "pay_double", by="finance")
        # Nothing changed: still pending and running, no update in the history, nothing paid.
        [still] = await query_pending(env.client, handle.id)
        assert still.approval_id == APPROVAL_ID
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert await update_events(handle) == [] and paid(ledger) == []

        # The refusals used nothing up: finance can still decide, and the refund is paid once.
        await decide(env.client, handle.id, "approve", by="finance")
        outcome = await asyncio.wait_for(handle.result(), 30)
    assert outcome.outcome == "refunded" and outcome.decision.decided_by == "finance"
    assert len(paid(ledger)) == 1 and len(await update_events(handle)) == 2


async def test_nobody_decides_by_the_deadline_so_it_is_rejected(refund_env, keel_fake_llm, ledger):
    async with refund_env() as env:
        script_agent(keel_fake_llm)
        handle = await start(env, approval_deadline=timedelta(seconds=1))
        outcome = await asyncio.wait_for(handle.result(), 30)
    assert outcome.outcome == "rejected"
    assert (outcome.decision.reason, outcome.decision.decided_by) == ("auto_rejected", "keel")
    assert paid(ledger) == []


async def test_a_draft_the_tool_never_accepted_is_not_sent_for_approval(refund_env, keel_fake_llm, ledger):
    too_much = {**DRAFT, "amount": 300.0}  # the order was charged 240.00 in all
    async with refund_env() as env:
        keel_fake_llm.script(
            Step.tool_calls(("lookup_order", {"order": "1042"})),
            Step.tool_calls(("draft_refund", too_much)),  # refused by the tool
            Step.ok(json.dumps(too_much)),  # and the model answers with it anyway
        )
        outcome = await (await start(env)).result()
    refusal = [m for m in keel_fake_llm.requests[2]["messages"] if m["role"] == "tool"][-1]["content"]
    assert refusal.startswith("error:") and "300.00 is more than the 240.00 still refundable" in refusal
    assert outcome.outcome == "no_draft" and outcome.decision is None
    assert outcome.reason == "draft_refund never accepted 300.00 on order 1042"
    assert paid(ledger) == []
