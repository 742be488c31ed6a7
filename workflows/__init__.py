"""Keel's built-in workflows: deterministic orchestration only, no I/O (the work happens in
``keel.activities``). The pipelines use only the public API (``keel.steps``, ``keel.llm``);
the entity workflows hold the state the provider chain shares across runs."""

from keel.workflows.agent import KeelAgent
from keel.workflows.erase import EraseTenant
from keel.workflows.answer import AnswerQuestion, AskInput, AskResult
from keel.workflows.permissions import SetReaders
from keel.workflows.ingest import IngestCorpus, IngestCorpusInput, IngestDocument, IngestSettings, IngestSummary
from keel.workflows.provider_health import ProviderHealth
from keel.workflows.stats import IndexStats, IndexStatsInput
from keel.workflows.tenant_budget import TenantBudget
from keel.workflows.upload import IngestUpload, IngestUploadInput
from keel.workflows.evaluate import EvaluateRun, WhatIfAsk  # after answer: it imports keel.activities.evaluate

ALL_WORKFLOWS = [IngestCorpus, IngestDocument, AnswerQuestion, IndexStats, ProviderHealth, TenantBudget, KeelAgent, EraseTenant, IngestUpload, SetReaders, EvaluateRun, WhatIfAsk]

__all__ = [
    "ALL_WORKFLOWS",
    "AnswerQuestion",
    "AskInput",
    "AskResult",
    "EraseTenant",
    "IndexStats",
    "IndexStatsInput",
    "IngestCorpus",
    "IngestCorpusInput",
    "IngestDocument",
    "IngestSettings",
    "IngestSummary",
    "IngestUpload",
    "IngestUploadInput",
    "KeelAgent",
    "ProviderHealth",
    "SetReaders",
    "TenantBudget",
]
