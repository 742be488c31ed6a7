"""Deterministic orchestration only: no I/O here, the work happens in ``activities``."""

from workflows.answer import AnswerQuestion
from workflows.ingest import IngestCorpus, IngestDocument
from workflows.provider_health import ProviderHealth
from workflows.stats import IndexStats
from workflows.tenant_budget import TenantBudget

ALL_WORKFLOWS = [IngestCorpus, IngestDocument, AnswerQuestion, IndexStats, ProviderHealth, TenantBudget]

__all__ = [
    "ALL_WORKFLOWS",
    "AnswerQuestion",
    "IndexStats",
    "IngestCorpus",
    "IngestDocument",
    "ProviderHealth",
    "TenantBudget",
]
