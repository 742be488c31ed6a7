"""Follow up on an unanswered support ticket: wait for the customer's reply or three days.

``FollowUpTicket``: after an agent answered a ticket, wait durably for the event
``customer_replied`` (a signal, handled by ``keel.wait_for_event``: the workflow declares no
handler) or for ``wait`` (default three days: a Temporal timer, which survives worker and server
restarts and costs nothing while it runs). A reply ends the run. Without one, draft a short
follow-up with one validated LLM call (a fixed template if the LLM gives nothing valid) and send
it with ``send_follow_up``, an idempotent activity: a retried send does not mail the customer
twice.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import keel
    from keel import llm

REPLIED = "customer_replied"  # the event (signal) name a backend sends
DEFAULT_WAIT = timedelta(days=3)
OUTBOX_ENV = "FOLLOWUP_OUTBOX"  # where send_follow_up "sends" (writes) its emails


@dataclass
class Ticket:
    tenant: str
    id: str
    customer_email: str  # used to send, never shown to the LLM
    subject: str
    last_agent_message: str


@dataclass
class FollowUpInput:
    ticket: Ticket
    wait: timedelta = DEFAULT_WAIT  # how long the customer has to reply


@dataclass
class CustomerReply:
    """The ``customer_replied`` event's payload."""

    text: str


@dataclass
class FollowUpResult:
    outcome: Literal["replied", "followed_up"]
    waited: timedelta  # workflow time from the start of the wait to the reply or the deadline
    reply: str | None = None
    message: str | None = None  # the follow-up that was sent
    drafted_by: Literal["llm", "template"] | None = None
    llm_reason: str | None = None  # why the template was used


class FollowUp(BaseModel):
    """What the model must reply with."""

    message: str = Field(min_length=1, max_length=1200, description="the follow-up email's body")


SYSTEM = (
    "You write short, friendly follow-up emails for a support team. The customer has not answered "
    "the agent's last message for a few days. Ask whether the issue is solved and offer more help. "
    "No greeting placeholders, no signature."
)


def prompt(ticket: Ticket) -> str:
    return f"Ticket subject: {ticket.subject}\n\nThe agent's last message:\n{ticket.last_agent_message}"


def template(ticket: Ticket) -> str:
    return (
        f"We wanted to check in about \"{ticket.subject}\". Did our last answer solve the problem? "
        "Just reply to this email if you need anything else."
    )


# --- the send step (this project's own activity) ------------------------------------------------


@dataclass
class Email:
    idempotency_key: str
    ticket_id: str
    to: str
    subject: str
    body: str


@dataclass
class SendResult:
    path: str
    already_sent: bool


@activity.defn
def send_follow_up(email: Email) -> SendResult:
    """"Send" the email by writing it to the outbox, once per idempotency key (a real mailer
    would pass the key to the provider's idempotency header)."""
    outbox = Path(os.environ.get(OUTBOX_ENV, "outbox"))
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / (re.sub(r"[^A-Za-z0-9_.-]", "_", email.idempotency_key) + ".json")
    try:
        with open(path, "x") as f:  # exclusive create: a retry finds the file and sends nothing
            json.dump(email.__dict__, f)
    except FileExistsError:
        return SendResult(str(path), already_sent=True)
    return SendResult(str(path), already_sent=False)


# --- the workflow ----------------------------------------------------------------------------


@workflow.defn
class FollowUpTicket:
    @workflow.run
    async def run(self, inp: FollowUpInput) -> FollowUpResult:
        ticket = inp.ticket
        started = workflow.now()
        event = await keel.wait_for_event(
            REPLIED, timeout=inp.wait, payload_type=CustomerReply, summary=f"customer reply to ticket {ticket.id}"
        )
        if event.received:
            return FollowUpResult("replied", waited=event.received_at - started, reply=event.payload.text)
        waited = workflow.now() - started

        out = await llm.complete(prompt(ticket), FollowUp, tenant=ticket.tenant, system=SYSTEM)
        message, drafted_by = (out.value.message, "llm") if out.ok else (template(ticket), "template")
        info = workflow.info()
        await workflow.execute_activity(
            send_follow_up,
            Email(f"{info.workflow_id}-{info.run_id}", ticket.id, ticket.customer_email, f"Re: {ticket.subject}", message),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )
        return FollowUpResult(
            "followed_up", waited=waited, message=message, drafted_by=drafted_by,
            llm_reason=None if out.ok else out.reason,
        )
