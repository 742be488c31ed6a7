"""The follow-up workflow; ``worker.py`` runs it on the ``followup`` task queue."""

from workflows.followup import (
    DEFAULT_WAIT,
    REPLIED,
    CustomerReply,
    Email,
    FollowUpInput,
    FollowUpResult,
    FollowUpTicket,
    Ticket,
    send_follow_up,
)

WORKFLOWS = [FollowUpTicket]
ACTIVITIES = [send_follow_up]

__all__ = [
    "ACTIVITIES",
    "DEFAULT_WAIT",
    "REPLIED",
    "WORKFLOWS",
    "CustomerReply",
    "Email",
    "FollowUpInput",
    "FollowUpResult",
    "FollowUpTicket",
    "Ticket",
    "send_follow_up",
]
