"""The research-agent workflows; ``worker.py`` runs them on the ``research`` task queue."""

from workflows.research import (
    SEARCH_NOTES,
    Findings,
    IndexNotes,
    IndexNotesInput,
    IndexNotesResult,
    Note,
    Research,
    ResearchQuestion,
    ResearchResult,
    Search,
    search_notes,
)

WORKFLOWS = [IndexNotes, Research]
ACTIVITIES = [search_notes]  # the agent's tool: it runs here, next to the embedded index

__all__ = [
    "ACTIVITIES",
    "SEARCH_NOTES",
    "WORKFLOWS",
    "Findings",
    "IndexNotes",
    "IndexNotesInput",
    "IndexNotesResult",
    "Note",
    "Research",
    "ResearchQuestion",
    "ResearchResult",
    "Search",
    "search_notes",
]
