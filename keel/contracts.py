"""Typed inputs and outputs of Keel's workflows and activities.

Each workflow and activity takes one of these and returns one, so fields can be added later
(with defaults) without breaking running histories. Large data is never a field here: it is a
blob key (see ``keel.blobs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class GenerateOutput:
    content: str
    model: str
    usage: Usage


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
