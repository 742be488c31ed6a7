"""Send a refund request to the agent, then wait for finance's decision (with the worker running):

    python starter.py ["Please refund the double charge on order 1042."]

It prints the pending approval and how to decide it (``keel approve ID --as finance``, or
``keel reject ID --reason TEXT --as finance``, from any shell), then the outcome. A backend does
the same with any Temporal client, and decides with ``keel.approvals.decide(client, id, "approve",
by=<the signed-in user>)``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from keel.approvals import query_pending
from workflows import HandleRefundRequest, RefundRequest

MESSAGE = "Hi, my card was charged twice for order 1042 (the rain jacket). Please refund the extra charge."


async def main() -> None:
    message = sys.argv[1] if len(sys.argv) > 1 else MESSAGE
    settings = KeelSettings()
    # The plugin brings the pydantic data converter the workflow's input and result need.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings, index=False)]
    )
    handle = await client.start_workflow(
        HandleRefundRequest.run, RefundRequest("acme", message), id=f"refund-{uuid.uuid4().hex[:8]}", task_queue="refunds"
    )
    print(f"refund request {handle.id}: {settings.run_ui_url(handle.id)}")
    result = asyncio.ensure_future(handle.result())
    while not result.done():  # until the agent has drafted (or given up)
        try:
            pending = await query_pending(client, handle.id)
        except Exception:  # the agent is still drafting: the run has no approval (nor its query) yet
            pending = []
        if pending:
            p = pending[0]
            print(f"waiting for {', '.join(p.request.approvers)}: {p.request.summary}")
            print(f"  keel approve {handle.id} --as finance")
            print(f"  keel reject {handle.id} --reason '...' --as finance")
            break
        await asyncio.wait([result], timeout=1)
    outcome = await result
    print(f"{outcome.outcome}: {outcome.reason or outcome.draft}")
    if outcome.decision:
        print(f"decided by {outcome.decision.decided_by} ({outcome.decision.reason}) {outcome.decision.comment}")
    if outcome.receipt:
        print(f"paid: {outcome.receipt.ledger} (key {outcome.receipt.idempotency_key})")


if __name__ == "__main__":
    asyncio.run(main())
