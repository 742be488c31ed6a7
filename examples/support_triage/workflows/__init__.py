"""The support-triage workflows; ``worker.py`` runs them on the ``support`` task queue."""

from workflows.triage import (
    Article,
    IndexArticles,
    IndexArticlesInput,
    IndexArticlesResult,
    Ticket,
    Triage,
    TriageResult,
    TriageTicket,
)

WORKFLOWS = [IndexArticles, TriageTicket]

__all__ = [
    "WORKFLOWS",
    "Article",
    "IndexArticles",
    "IndexArticlesInput",
    "IndexArticlesResult",
    "Ticket",
    "Triage",
    "TriageResult",
    "TriageTicket",
]
