"""Deterministic orchestration only: no I/O here, the work happens in ``activities``."""

from workflows.answer import AnswerQuestion
from workflows.ingest import IngestCorpus, IngestDocument
from workflows.stats import IndexStats

ALL_WORKFLOWS = [IngestCorpus, IngestDocument, AnswerQuestion, IndexStats]

__all__ = ["ALL_WORKFLOWS", "AnswerQuestion", "IndexStats", "IngestCorpus", "IngestDocument"]
