"""The refund-agent workflow; ``worker.py`` runs it on the ``refunds`` task queue."""

from workflows.refund import (
    APPROVAL_ID,
    LEDGER_ENV,
    ORDERS,
    ExecuteRefund,
    HandleRefundRequest,
    RefundDraft,
    RefundOutcome,
    RefundReceipt,
    RefundRequest,
    draft_refund,
    execute_refund,
    lookup_order,
)


WORKFLOWS = [HandleRefundRequest]
# The agent's tools and the refund itself, all on this project's worker (KeelPlugin adds
# keel.approval's own notification activity).
ACTIVITIES = [lookup_order, draft_refund, execute_refund]

__all__ = [
    "ACTIVITIES",
    "APPROVAL_ID",
    "LEDGER_ENV",
    "ORDERS",
    "WORKFLOWS",
    "ExecuteRefund",
    "HandleRefundRequest",
    "RefundDraft",
    "RefundOutcome",
    "RefundReceipt",
    "RefundRequest",
    "draft_refund",
    "execute_refund",
    "lookup_order",
]
