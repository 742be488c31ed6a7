"""Typed inputs and outputs of Keel's workflows and activities.

Each workflow and activity takes one of these and returns one, so fields can be added later
(with defaults) without breaking running histories. Large data is never a field here: it is a
blob key (see ``keel.blobs``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# --- ingestion -------------------------------------------------------------------------------


@dataclass
class ListDocumentsInput:
    tenant: str
    paths: list[str]
    # Metadata for every listed document; a ``<file>.meta.json`` beside a file adds to it.
    tags: list[str] = field(default_factory=list)
    date: str | None = None


@dataclass
class DocumentEntry:
    path: str
    document_id: str  # stable per (tenant, path): a changed file replaces its old chunks
    content_hash: str  # also the blob key of the file's bytes
    size: int
    tags: list[str] = field(default_factory=list)
    date: str | None = None  # ISO date
    # Names what gets indexed: the content hash, or a hash of it and the metadata when there is any.
    version: str = ""
    metadata_error: str | None = None  # an unreadable .meta.json: this document fails, typed

    @property
    def indexed_version(self) -> str:
        return self.version or self.content_hash


@dataclass
class ListDocumentsOutput:
    manifest_key: str  # blob: list[DocumentEntry] as dicts
    count: int


@dataclass
class ManifestPageInput:
    manifest_key: str
    offset: int
    limit: int


@dataclass
class ManifestPage:
    entries: list[DocumentEntry]


INDEX_TASK_QUEUE = "keel-index"


@dataclass
class IngestCorpusInput:
    tenant: str
    paths: list[str] = field(default_factory=list)
    concurrency: int = 8
    documents_per_run: int = 200  # continue-as-new after this many, to bound history
    index_task_queue: str = INDEX_TASK_QUEUE
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    # Set by the workflow itself when it continues as new.
    manifest_key: str | None = None
    total: int = 0
    offset: int = 0
    summary: "IngestSummary | None" = None


@dataclass
class DocumentFailure:
    path: str
    error_type: str
    message: str
    workflow_id: str


@dataclass
class IngestSummary:
    total: int = 0
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks: int = 0
    failures: list[DocumentFailure] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.indexed + self.unchanged + self.failed


@dataclass
class IngestDocumentInput:
    tenant: str
    document_id: str
    path: str
    content_hash: str
    index_task_queue: str = INDEX_TASK_QUEUE
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    version: str = ""  # see DocumentEntry.version
    metadata_error: str | None = None


@dataclass
class IngestDocumentOutput:
    document_id: str
    path: str
    chunks: int
    pii_counts: dict[str, int]


@dataclass
class PartitionInput:
    path: str
    content_hash: str


@dataclass
class PartitionOutput:
    elements_key: str  # blob: list of {"type", "text"}
    elements: int
    characters: int


@dataclass
class ScrubDocumentInput:
    elements_key: str


@dataclass
class ScrubDocumentOutput:
    elements_key: str
    pii_counts: dict[str, int]


@dataclass
class ChunkInput:
    elements_key: str


@dataclass
class ChunkOutput:
    chunks_key: str  # blob: list of {"text", "section"}
    chunks: int


@dataclass
class EmbedInput:
    chunks_key: str


@dataclass
class EmbedOutput:
    vectors_key: str  # blob: float32 matrix, .npy bytes
    dimensions: int


@dataclass
class IndexInput:
    tenant: str
    document_id: str
    source: str
    content_hash: str  # the version: DocumentEntry.indexed_version
    chunks_key: str
    vectors_key: str
    tags: list[str] = field(default_factory=list)
    date: str | None = None


@dataclass
class IndexOutput:
    upserted: int
    removed_stale: int


# --- question answering ----------------------------------------------------------------------


@dataclass
class ScrubTextInput:
    text: str


@dataclass
class ScrubTextOutput:
    text: str
    pii_counts: dict[str, int]


@dataclass
class QueryFilters:
    """Optional narrowing of retrieval (the tenant is always applied): exact source path,
    any of ``tags``, document date within [date_from, date_to] (ISO dates, inclusive)."""

    source: str | None = None
    tags: list[str] = field(default_factory=list)
    date_from: str | None = None
    date_to: str | None = None


@dataclass
class RetrieveInput:
    tenant: str
    query: str
    top_k: int
    prefetch_k: int
    filters: QueryFilters | None = None


@dataclass
class RetrievedChunk:
    chunk_id: str
    document: str
    text: str
    score: float  # cosine similarity of query and chunk (dense), the answerability signal
    fused_score: float  # RRF score that ordered the results


@dataclass
class RetrieveOutput:
    chunks: list[RetrievedChunk]
    embedding_model: str


@dataclass
class IndexedVersionsInput:
    tenant: str
    document_ids: list[str]


@dataclass
class IndexedVersionsOutput:
    content_hashes: dict[str, str]  # document id -> content hash of the indexed version


@dataclass
class IndexStatsInput:
    tenant: str
    index_task_queue: str = INDEX_TASK_QUEUE


@dataclass
class IndexStatsOutput:
    documents: int
    chunks: int


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class GenerateInput:
    question: str
    chunks: list[RetrievedChunk]
    prompt_version: str
    # Validation errors of the previous attempt: set for the one repair re-ask.
    repair_errors: list[str] = field(default_factory=list)
    previous_output: str | None = None
    # Which provider of the chain (by name; "" = the first), and what its attempts report to.
    provider: str = ""
    call: int = 0  # the run's n-th LLM call, to tell the attempts of two calls apart
    tenant: str = ""
    entity_task_queue: str = ""  # where the ledger and provider-health workflows run


@dataclass
class GenerateOutput:
    content: str
    model: str
    usage: Usage
    provider: str = ""
    record: "ProviderAttempt | None" = None  # this attempt, as reported to the run


@dataclass
class ValidateInput:
    content: str
    chunks: list[RetrievedChunk]


@dataclass
class Citation:
    chunk_id: str
    document: str
    score: float


@dataclass
class ValidateOutput:
    valid: bool
    answer: str = ""
    citations: list[Citation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class AskInput:
    tenant: str
    question: str
    top_k: int = 5
    prefetch_k: int = 40
    min_relevance: float = 0.25
    prompt_version: str = "answer-v1"
    index_task_queue: str = INDEX_TASK_QUEUE
    filters: QueryFilters | None = None
    use_cache: bool = True  # False: skip the cache lookup (a fresh answer still refreshes it)
    max_cost_usd: float | None = None  # per-run budget: no further LLM call once spent


@dataclass
class AskResult:
    answer: str
    citations: list[Citation]
    degraded: bool
    answerable: bool
    usage: Usage
    model: str
    attempts: int
    settings: dict[str, Any]
    pii_counts: dict[str, int] = field(default_factory=dict)
    degraded_reason: str | None = None
    provider: str = ""  # the provider whose answer this is ("" when no LLM answered)
    provider_attempts: list["ProviderAttempt"] = field(default_factory=list)  # every attempt, retries included
    cost_usd: float = 0.0  # of every attempt, failed ones included
    cache: str | None = None  # CacheHit value when the answer came from the cache
    decisions: list["PolicyDecision"] = field(default_factory=list)  # budget and breaker decisions


# --- LLM calls: provider chain, accounting, breaker, budgets, cache ----------------------------


class AttemptOutcome(str, enum.Enum):
    ANSWERED = "answered"  # a reply that validated
    REPLIED = "replied"  # a reply, not validated yet
    INVALID = "invalid"  # a reply that did not validate (schema, citations, empty)
    FAILED = "failed"  # a retryable error: 429, 5xx, timeout, reset, unreadable body
    REJECTED = "rejected"  # a non-retryable error: 400/401/403/404/422, or a too long Retry-After
    SKIPPED = "skipped"  # not tried: its circuit is open


@dataclass
class ProviderAttempt:
    """One HTTP request to a provider (or a provider skipped), with what it cost."""

    provider: str
    model: str
    outcome: AttemptOutcome
    error_type: str | None = None
    message: str | None = None
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False  # no usage reported, the prompt is counted at an estimated size
    cost_usd: float = 0.0
    call: int = 0  # the run's n-th LLM call (0 for a skipped provider)
    attempt: int = 0  # Temporal's attempt number within that call
    retry_after_seconds: float | None = None


class DecisionKind(str, enum.Enum):
    TENANT_BUDGET_EXHAUSTED = "tenant_budget_exhausted"  # switched to the budget providers
    RUN_BUDGET_EXHAUSTED = "run_budget_exhausted"  # no further LLM call in this run
    CIRCUIT_OPEN = "circuit_open"  # a provider skipped while it cools down


@dataclass
class PolicyDecision:
    kind: DecisionKind
    detail: str


class CacheHit(str, enum.Enum):
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass
class PlanInput:
    tenant: str
    entity_task_queue: str


@dataclass
class ProviderPlan:
    """A provider of the chain as the run sees it: its settings and its shared health."""

    name: str
    model: str
    max_attempts: int
    timeout_seconds: float
    budget_fallback: bool
    price_prompt_per_1k: float
    price_completion_per_1k: float
    open_until: datetime | None = None  # circuit open until then
    consecutive_failures: int = 0


@dataclass
class LLMPlan:
    providers: list[ProviderPlan]
    period: str  # the tenant budget's current period, e.g. "2026-11"
    tenant_spent_usd: float = 0.0
    tenant_budget_usd: float | None = None
    cache_enabled: bool = False
    semantic_cache: bool = False


@dataclass
class HealthReport:
    """An attempt's outcome as the provider's circuit breaker sees it."""

    ok: bool
    error_type: str | None = None
    message: str | None = None
    retry_after_seconds: float | None = None
    # From the provider's settings, so the breaker needs no configuration of its own.
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 30.0
    max_retry_after_seconds: float = 30.0


@dataclass
class ProviderReportInput:
    """What a run tells a provider's breaker: a valid answer after failures, or a reply still
    invalid after the repair re-ask (a drifting model counts like an outage)."""

    provider: str
    entity_task_queue: str
    ok: bool
    error_type: str | None = None
    message: str | None = None


@dataclass
class ProviderHealthState:
    provider: str
    consecutive_failures: int = 0
    open_until: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    successes: int = 0
    times_opened: int = 0


@dataclass
class ProviderHealthInput:
    state: ProviderHealthState


@dataclass
class Charge:
    """What one attempt cost a tenant."""

    period: str
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    provider: str = ""


@dataclass
class PeriodSpend:
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0


@dataclass
class TenantBudgetInput:
    tenant: str
    periods: dict[str, PeriodSpend] = field(default_factory=dict)


@dataclass
class CacheLookupInput:
    tenant: str
    question: str  # scrubbed
    prompt_version: str
    models: list[str]
    chunk_ids: list[str]  # retrieved, in rank order
    semantic: bool


@dataclass
class CacheLookupOutput:
    hit: CacheHit | None = None
    answer: str = ""
    cited_chunk_ids: list[str] = field(default_factory=list)
    model: str = ""
    provider: str = ""
    similarity: float | None = None
    source_workflow_id: str = ""  # the run that produced the cached answer


@dataclass
class CacheStoreInput:
    tenant: str
    question: str
    prompt_version: str
    model: str
    provider: str
    chunk_ids: list[str]
    answer: str
    cited_chunk_ids: list[str]
    workflow_id: str
    semantic: bool


@dataclass
class CacheStoreOutput:
    stored: bool
