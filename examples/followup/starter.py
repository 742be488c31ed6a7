"""Start a follow-up for a sample ticket, or tell it the customer replied (with the worker running).

    python starter.py start [--wait-seconds N]     # default: three days
    python starter.py reply TICKET_ID "Yes, it works now, thanks!"

A backend does the same: a plain Temporal client that starts ``FollowUpTicket`` when an agent
answers a ticket, and signals ``customer_replied`` to the run when the customer writes back.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import timedelta

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from workflows import DEFAULT_WAIT, REPLIED, CustomerReply, FollowUpInput, FollowUpTicket, Ticket


def workflow_id(ticket_id: str) -> str:
    return f"followup-{ticket_id}"  # one follow-up per ticket: starting a second one is refused


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("--wait-seconds", type=float, help="how long the customer has (default: three days)")
    reply = sub.add_parser("reply")
    reply.add_argument("ticket_id")
    reply.add_argument("text")
    args = parser.parse_args()

    settings = KeelSettings()
    # The plugin brings the pydantic data converter the workflow's input and result need.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings, index=False)]
    )
    if args.command == "reply":
        await client.get_workflow_handle(workflow_id(args.ticket_id)).signal(REPLIED, CustomerReply(args.text))
        print(f"told ticket {args.ticket_id}'s follow-up that the customer replied")
        return
    ticket = Ticket(
        tenant="acme",
        id=f"T-{uuid.uuid4().hex[:6]}",
        customer_email="jane@example.com",
        subject="Charged twice for order 1042",
        last_agent_message="The duplicate charge has been refunded; it shows on your statement within 5 days.",
    )
    wait = timedelta(seconds=args.wait_seconds) if args.wait_seconds else DEFAULT_WAIT
    handle = await client.start_workflow(
        FollowUpTicket.run, FollowUpInput(ticket, wait), id=workflow_id(ticket.id), task_queue="followup"
    )
    print(f"following up on ticket {ticket.id} in {wait} unless the customer replies: "
          f"python starter.py reply {ticket.id} \"...\"")
    print(f"run: {settings.run_ui_url(handle.id)}")


if __name__ == "__main__":
    asyncio.run(main())
