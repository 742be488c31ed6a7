"""Index three sample articles, then triage a ticket: ``python starter.py`` (with the worker running).

A backend service does the same: a plain Temporal client that starts workflows on ``support``.
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from workflows import Article, IndexArticles, IndexArticlesInput, Ticket, TriageTicket

TENANT = "acme"
ARTICLES = [
    Article(
        "refunds",
        "Refunds and double charges",
        "If a card was charged twice for one order, the duplicate charge is refunded automatically "
        "within 5 business days. Refunds go back to the original payment method.",
    ),
    Article(
        "password-reset",
        "Resetting your password",
        "Use 'Forgot password' on the sign-in page. The reset link in the email expires after 30 minutes.",
    ),
    Article(
        "shipping",
        "Shipping times",
        "Orders ship within 2 business days. Standard delivery takes 3 to 5 days, express 1 to 2 days.",
    ),
]


async def main() -> None:
    settings = KeelSettings()
    # The plugin brings the pydantic data converter the workflows' results need.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )
    indexed = await client.execute_workflow(
        IndexArticles.run, IndexArticlesInput(TENANT, ARTICLES), id=f"kb-{TENANT}", task_queue="support"
    )
    print(f"indexed {indexed.articles} articles ({indexed.chunks} chunks)")
    ticket = Ticket(TENANT, "Charged twice", "Hi, I'm Jane Doe (jane@example.com). My card was charged twice for order 1042.")
    result = await client.execute_workflow(
        TriageTicket.run, ticket, id=f"triage-{uuid.uuid4().hex[:8]}", task_queue="support"
    )
    print(result)


if __name__ == "__main__":
    asyncio.run(main())
