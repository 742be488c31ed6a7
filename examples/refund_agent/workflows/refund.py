"""A refund agent on Keel: it drafts a refund, a person approves it, then it is paid once.

``HandleRefundRequest``:

1. ``run_agent`` with two tools without side effects: ``lookup_order`` (the order, what was
   charged and what is still refundable) and ``draft_refund`` (checks a proposed refund against
   the order). The agent answers with ``RefundDraft(order, amount, reason)``; the workflow takes
   it only if ``draft_refund`` accepted exactly that order and amount during the run (read from
   the recorded tool calls: the model cannot answer with an amount nobody checked).
2. ``keel.approval("refund", ...)``: finance decides (a Temporal Update whose validator refuses
   anyone who is not an approver, changing nothing). Nobody decides by the deadline: rejected.
3. Approved: ``execute_refund``, this project's activity, pays the refund with an idempotency key
   made from the workflow id, so a retried activity (or a worker that crashed after paying)
   never pays twice. Rejected: nothing is paid.

The agent never holds a tool that moves money: the only side effect is after a person's
decision, in plain workflow code.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import keel
    from keel import ApprovalDecision, ApprovalRequest, Escalation
    from keel.agents import AgentLimits, ToolCallRecord, run_agent, tool

LEDGER_ENV = "REFUND_LEDGER"  # the file execute_refund appends refunds to (default refunds.tsv)
APPROVAL_ID = "refund"
DEFAULT_APPROVERS = ["finance"]
DEFAULT_DEADLINE = timedelta(days=2)


# --- the order system (a stand-in) and the agent's tools -----------------------------------------


@dataclass
class Order:
    id: str
    customer: str
    item: str
    price: float
    charged: float  # what the card was charged (twice the price after a double charge)
    refunded: float = 0.0

    @property
    def refundable(self) -> float:
        return round(self.charged - self.refunded, 2)


ORDERS = {
    "1042": Order("1042", "C-17", "rain jacket", price=120.0, charged=240.0),  # charged twice
    "1043": Order("1043", "C-17", "wool hat", price=25.0, charged=25.0, refunded=25.0),  # already refunded
    "2001": Order("2001", "C-88", "hiking boots", price=180.0, charged=180.0),
}


def _order(order: str) -> Order:
    found = ORDERS.get(order.strip().lstrip("#"))
    if found is None:
        # The tool contract's non-retryable error: the model is told and may try another call.
        raise ApplicationError(f"no order {order!r}", type="InvalidToolArguments", non_retryable=True)
    return found


@tool
def lookup_order(order: str) -> str:
    """Look up an order by its number: item, price, what the card was charged, what was already
    refunded and what is still refundable."""
    o = _order(order)
    return json.dumps({
        "order": o.id, "item": o.item, "price": o.price, "charged": o.charged, "refunded": o.refunded,
        "refundable": o.refundable,
    })


@tool
def draft_refund(order: str, amount: float, reason: str) -> str:
    """Check a proposed refund against the order (it pays nothing: a person approves it later).
    Call it with the amount you will propose; it refuses more than the order's refundable amount."""
    o = _order(order)
    if amount <= 0 or round(amount, 2) != amount:
        raise ApplicationError(f"amount must be positive, in cents, not {amount}", type="InvalidToolArguments", non_retryable=True)
    if amount > o.refundable:
        raise ApplicationError(
            f"{amount:.2f} is more than the {o.refundable:.2f} still refundable on order {o.id}",
            type="InvalidToolArguments", non_retryable=True,
        )
    if not reason.strip():
        raise ApplicationError("a refund needs a reason", type="InvalidToolArguments", non_retryable=True)
    return f"draft accepted: refund {amount:.2f} on order {o.id} ({reason.strip()}); it needs a finance approval"


# --- the side effect: pay the refund, once per key ---------------------------------------------------


@dataclass
class ExecuteRefund:
    idempotency_key: str
    order: str
    amount: float
    reason: str


@dataclass
class RefundReceipt:
    idempotency_key: str
    ledger: str
    already_done: bool  # a retry (or a second run with the same key) found the refund paid


@activity.defn
def execute_refund(inp: ExecuteRefund) -> RefundReceipt:
    """Pay a refund: one ledger line per idempotency key, however often it is retried.

    The ledger stands in for a payment provider's API; a real one gets the key in its
    idempotency header. The file lock makes check-and-append atomic across worker processes.
    """
    path = Path(os.environ.get(LEDGER_ENV, "refunds.tsv"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        if any(line.split("\t", 1)[0] == inp.idempotency_key for line in f.read().splitlines()):
            return RefundReceipt(inp.idempotency_key, str(path), already_done=True)
        f.write(f"{inp.idempotency_key}\t{inp.order}\t{inp.amount:.2f}\t{inp.reason}\n")
        f.flush()
        os.fsync(f.fileno())
    return RefundReceipt(inp.idempotency_key, str(path), already_done=False)


# --- HandleRefundRequest --------------------------------------------------------------------------


class RefundDraft(BaseModel):
    """What the agent must answer with (its JSON schema is sent to the provider)."""

    order: str = Field(min_length=1, description="the order number")
    amount: float = Field(gt=0, description="the refund, in the order's currency")
    reason: str = Field(min_length=1, description="why, in one line, for the person who approves it")


@dataclass
class RefundRequest:
    tenant: str
    message: str  # the customer's request, as written
    approvers: list[str] = field(default_factory=lambda: list(DEFAULT_APPROVERS))
    approval_deadline: timedelta = DEFAULT_DEADLINE  # then the refund is rejected automatically
    max_turns: int = 6


@dataclass
class RefundOutcome:
    outcome: Literal["refunded", "rejected", "no_draft"]
    reason: str = ""  # why there is no draft
    draft: RefundDraft | None = None
    decision: ApprovalDecision | None = None
    receipt: RefundReceipt | None = None
    agent_turns: int = 0
    tool_calls: list[str] = field(default_factory=list)  # the agent's tool calls, by name


SYSTEM = (
    "You handle refund requests for an online shop. Look the order up, decide the refund the "
    "customer is owed (never more than what is still refundable), check it with draft_refund, "
    "then answer with the order, the amount and a one-line reason. A person approves every refund."
)


def checked_by_tool(calls: list[ToolCallRecord], draft: RefundDraft) -> bool:
    """Whether ``draft_refund`` accepted this draft's order and amount during the run."""
    for c in calls:
        if c.name != "draft_refund" or c.error is not None:
            continue
        try:
            args = json.loads(c.arguments)
            if str(args["order"]).strip().lstrip("#") == draft.order.strip().lstrip("#") and float(args["amount"]) == draft.amount:
                return True
        except (ValueError, KeyError, TypeError):
            continue
    return False


@workflow.defn
class HandleRefundRequest:
    @workflow.run
    async def run(self, req: RefundRequest) -> RefundOutcome:
        agent = await run_agent(
            req.message,
            RefundDraft,
            tenant=req.tenant,
            tools=[lookup_order, draft_refund],
            system=SYSTEM,
            limits=AgentLimits(max_turns=req.max_turns),
        )
        out = RefundOutcome("no_draft", agent_turns=agent.turns, tool_calls=[c.name for c in agent.tool_calls])
        if not agent.ok:
            out.reason = f"the agent gave no draft ({agent.stop.value}): {agent.reason}"
            return out
        draft = out.draft = agent.value
        draft.order = draft.order.strip().lstrip("#")
        if not checked_by_tool(agent.tool_calls, draft):
            out.reason = f"draft_refund never accepted {draft.amount:.2f} on order {draft.order}"
            return out

        out.decision = await keel.approval(
            APPROVAL_ID,
            request=ApprovalRequest(
                summary=f"Refund {draft.amount:.2f} on order {draft.order}: {draft.reason}",
                approvers=req.approvers,
                details={"order": draft.order, "amount": f"{draft.amount:.2f}", "reason": draft.reason, "request": req.message[:500]},
                tenant=req.tenant,
            ),
            escalation=Escalation(deadline=req.approval_deadline, on_deadline="reject"),
        )
        if not out.decision.approved:
            out.outcome = "rejected"
            return out

        # The key is the workflow id: one refund per request (start each request with its own
        # id, e.g. "refund-<ticket>"), whatever retries or restarts happen.
        key = f"refund/{workflow.info().workflow_id}"
        out.receipt = await workflow.execute_activity(
            execute_refund,
            ExecuteRefund(key, draft.order, draft.amount, draft.reason),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),  # until it is paid
        )
        out.outcome = "refunded"
        return out
