"""The summarizer's workflows; ``worker.py`` runs them on the ``summaries`` task queue."""

from workflows.summarize import ChunkSummary, SummarizeDocument, SummarizeInput, SummarizeResult, Summary

WORKFLOWS = [SummarizeDocument]

__all__ = ["WORKFLOWS", "ChunkSummary", "SummarizeDocument", "SummarizeInput", "SummarizeResult", "Summary"]
