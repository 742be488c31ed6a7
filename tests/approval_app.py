"""A user's workflows that wait for people and events, for tests/test_approvals.py and
tests/test_waits.py.

``prepare_refund`` has a side effect the tests count: it appends one line to the file named in
its input each time it runs (on purpose not idempotent, so a re-execution would show).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import keel
    from keel import ApprovalDecision, ApprovalRequest, Escalation


@dataclass
class PrepareInput:
    order: str
    effects: str  # the file that counts runs


@activity.defn
def prepare_refund(inp: PrepareInput) -> str:
    with open(inp.effects, "a") as f:
        f.write(f"{inp.order}\t{activity.info().workflow_id}\n")
    return f"refund of {inp.order} prepared"


@dataclass
class RefundInput:
    order: str
    effects: str
    approvers: list[str] = field(default_factory=lambda: ["alice", "bob"])
    tenant: str | None = None
    sla_seconds: float | None = None
    notify_after_seconds: float | None = None
    deadline_seconds: float | None = None
    on_deadline: str = "reject"
    webhook_url: str | None = None


@dataclass
class RefundOutcome:
    decision: ApprovalDecision
    refunded: bool


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


@workflow.defn
class RefundApproval:
    """Prepare a refund, ask a person, refund only if approved. No handler of its own."""

    @workflow.run
    async def run(self, inp: RefundInput) -> RefundOutcome:
        await workflow.execute_activity(
            prepare_refund, PrepareInput(inp.order, inp.effects), start_to_close_timeout=timedelta(seconds=30)
        )
        escalation = None
        if inp.notify_after_seconds or inp.deadline_seconds:
            escalation = Escalation(
                notify_after=_seconds(inp.notify_after_seconds),
                notify=["manager"],
                deadline=_seconds(inp.deadline_seconds),
                on_deadline=inp.on_deadline,
            )
        decision = await keel.approval(
            f"refund-{inp.order}",
            request=ApprovalRequest(
                summary=f"Refund order {inp.order}",
                approvers=inp.approvers,
                details={"order": inp.order},
                tenant=inp.tenant,
                webhook_url=inp.webhook_url,
            ),
            sla=_seconds(inp.sla_seconds),
            escalation=escalation,
        )
        return RefundOutcome(decision=decision, refunded=decision.approved)


@workflow.defn
class TwoApprovals:
    """Legal and finance decide the same contract, independently and at the same time."""

    @workflow.run
    async def run(self, contract: str) -> list[ApprovalDecision]:
        legal = keel.approval("legal", request=ApprovalRequest(f"Contract {contract}: legal review", approvers=["lena"]))
        finance = keel.approval(
            "finance",
            request=ApprovalRequest(
                f"Contract {contract}: budget", approvers=["fred", "lena"],
                allowed=["approve", "approve_reduced", "reject"], approving=["approve", "approve_reduced"],
            ),
        )
        return list(await asyncio.gather(legal, finance))


@dataclass
class Seen:
    received: bool
    payload: str | None


@workflow.defn
class CollectNotes:
    """Waits for ``note`` events in several ways; reports what each wait saw."""

    @workflow.run
    async def run(self, wait_seconds: float) -> list[Seen]:
        events = [
            await keel.wait_for_event("note", timeout=timedelta(0)),  # only takes one already there
            await keel.wait_for_event("note", timeout=timedelta(0)),
            await keel.wait_for_event("note", timeout=timedelta(seconds=wait_seconds), summary="second note"),
            await keel.wait_for_event("note"),  # no deadline
            await keel.wait_for_event("other", timeout=timedelta(seconds=0.5)),
        ]
        await keel.sleep(timedelta(milliseconds=100), summary="a nap")
        return [Seen(e.received, e.payload) for e in events]


WORKFLOWS = [RefundApproval, TwoApprovals, CollectNotes]
ACTIVITIES = [prepare_refund]
