"""How a backend service uses Keel: start workflows with the Temporal client, await results.

    .venv/bin/keel up                      # or point KEEL_TEMPORAL_ADDRESS at your cluster
    .venv/bin/python examples/client.py

The client needs ``KeelPlugin`` (for the pydantic data converter Keel's workers use); the heavy
work runs on the workers.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from keel.workflows import AnswerQuestion, IngestCorpus


async def main() -> None:
    settings = KeelSettings()
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )

    corpus = Path(__file__).parent / "corpus"
    ingest = await client.start_workflow(
        IngestCorpus.run,
        settings.ingest_input("backend", [str(corpus.resolve())]),
        id=f"ingest-backend-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue,
    )
    summary = await ingest.result()
    print(f"ingested: {summary.indexed} new, {summary.unchanged} unchanged, {summary.failed} failed")

    ask = await client.start_workflow(
        AnswerQuestion.run,
        settings.ask_input("backend", "What are the lighthouse visiting hours?"),
        id=f"ask-backend-{uuid.uuid4().hex[:8]}",
        task_queue=settings.index_task_queue,  # where the index is: the search runs in the same task
    )
    result = await ask.result()
    print(result.answer)
    for c in result.citations:
        print(f"  [{c.score:.2f}] {c.document}")
    print(settings.run_ui_url(ask.id, ask.result_run_id))


if __name__ == "__main__":
    asyncio.run(main())
