"""Index the notes in ``notes/``, then research a question: ``python starter.py ["question"]``
(with the worker running).

A backend service does the same: a plain Temporal client that starts workflows on ``research``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from workflows import IndexNotes, IndexNotesInput, Note, Research, ResearchQuestion

TENANT = "acme"
NOTES = Path(__file__).parent / "notes"
QUESTION = "In which village was the longest-serving head keeper of Cape Arden lighthouse born?"


def load_notes(folder: Path) -> list[Note]:
    """One note per markdown file: its name is the id, its first line (``# Title``) the title."""
    notes = []
    for path in sorted(folder.glob("*.md")):
        title, _, body = path.read_text().partition("\n")
        notes.append(Note(path.stem, title.lstrip("# ").strip(), body.strip()))
    return notes


async def main() -> None:
    question = sys.argv[1] if len(sys.argv) > 1 else QUESTION
    settings = KeelSettings()
    # The plugin brings the pydantic data converter the workflows' results need.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )
    indexed = await client.execute_workflow(
        IndexNotes.run, IndexNotesInput(TENANT, load_notes(NOTES)), id=f"notes-{TENANT}", task_queue="research"
    )
    print(f"indexed {indexed.notes} notes ({indexed.chunks} chunks)")
    result = await client.execute_workflow(
        Research.run, ResearchQuestion(TENANT, question), id=f"research-{uuid.uuid4().hex[:8]}", task_queue="research"
    )
    for s in result.searches:
        print(f"searched {s.query!r}: {len(s.chunk_ids)} chunks{' (' + s.error + ')' if s.error else ''}")
    if not result.ok:
        print(f"no answer ({result.stop}): {result.reason}")
        return
    print(f"answer: {result.answer}")
    print(f"citations: {', '.join(result.citations)}")
    print("grounded" if result.grounded else f"NOT grounded: never retrieved: {', '.join(result.ungrounded) or '(no citation)'}")
    print(f"{result.turns} turns, ${result.cost_usd:.6f}; the agent's run: {settings.run_ui_url(result.agent_workflow_id)}")


if __name__ == "__main__":
    asyncio.run(main())
