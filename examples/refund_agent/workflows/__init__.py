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


def _approval_activities() -> list:
    """``keel.approval``'s notification activity (``keel.approval_notify``) where ``KeelPlugin``
    does not register it itself yet: a worker running approvals needs it."""
    from keel.activities.approvals import APPROVAL_ACTIVITIES
    from keel.plugin import keel_activities

    registered = {a.__temporal_activity_definition.name for a in keel_activities()}
    return [a for a in APPROVAL_ACTIVITIES if a.__temporal_activity_definition.name not in registered]


WORKFLOWS = [HandleRefundRequest]
# The agent's tools and the refund itself, all on this project's worker.
ACTIVITIES = [lookup_order, draft_refund, execute_refund, *_approval_activities()]

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
