"""Record one history per workflow type into ``tests/histories/`` from a running stack.

    keel up && python -m tests.record_histories

Uses the embedded default's settings (``KEEL_*``), the sample corpus and the configured LLM.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from keel.config import KeelSettings
from tests.conftest import CORPUS, KeelEnv
from workflows import IngestDocument

OUT = Path(__file__).parent / "histories"


async def main() -> None:
    from temporalio.client import Client

    settings = KeelSettings()
    env = KeelEnv(settings=settings, stack=None, client=await Client.connect(settings.temporal_address))
    tenant = f"histories-{uuid.uuid4().hex[:8]}"  # a fresh tenant, so every step really runs
    corpus_handle = await env.start_ingest([CORPUS / "history.txt", CORPUS / "membership.md"], tenant)
    await corpus_handle.result()
    _, ask_handle = await env.ask("How much does a family membership cost?", tenant)
    stats_handle = await env.client.start_workflow(
        "IndexStats", {"tenant": tenant, "index_task_queue": settings.index_task_queue},
        id=env.workflow_id("stats"), task_queue=settings.task_queue,
    )
    await stats_handle.result()
    query = f"WorkflowType = '{IngestDocument.__name__}' AND WorkflowId STARTS_WITH 'ingest-doc-{tenant}-'"
    doc_id = [wf.id async for wf in env.client.list_workflows(query)][0]
    handles = {
        "IngestCorpus": corpus_handle,
        "IngestDocument": env.client.get_workflow_handle(doc_id),
        "AnswerQuestion": ask_handle,
        "IndexStats": stats_handle,
    }
    OUT.mkdir(exist_ok=True)
    for name, handle in handles.items():
        history = await handle.fetch_history()
        (OUT / f"{name}.json").write_text(history.to_json())
        print(f"recorded {name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
