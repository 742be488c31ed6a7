"""Index and search activities. With an embedded store they run only on the index task queue,
served by the one worker process that owns the store. Each index backend handles its own
concurrency (Edge: queries share, writers serialise; qdrant-client local mode: one lock), so a
query never waits behind another document's upsert here.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
from temporalio import activity

from keel import telemetry
from keel.activities._runtime import heartbeating, runtime
from keel.errors import KeelError, to_application_error
from keel.types import (
    Chunks, EmbeddingSpec, Filters, IndexResult, RetrievalSettings, SearchResult, Vectors, asker_principals,
)


@dataclass
class IndexDocumentInput:
    tenant: str
    document_id: str
    chunks: Chunks
    vectors: Vectors
    source: str = ""
    version: str = ""  # names this version: other versions of the document are removed
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    readers: list[str] = field(default_factory=list)  # principals who may read it; empty: everyone


@activity.defn(name="keel.index_document")
@heartbeating
def index_document(inp: IndexDocumentInput) -> IndexResult:
    rt = runtime()
    chunks = rt.blobs.get_json(inp.chunks.key)
    vectors = np.load(io.BytesIO(rt.blobs.get(inp.vectors.key)), allow_pickle=False)
    try:
        upserted, removed = rt.index.replace_document(
            tenant=inp.tenant,
            document_id=inp.document_id,
            source=inp.source or inp.document_id,
            content_hash=inp.version or inp.chunks.key,
            chunks=chunks,
            vectors=vectors,
            tags=inp.tags,
            date=inp.date,
            readers=inp.readers,
        )
    except KeelError as e:
        raise to_application_error(e) from None
    return IndexResult(upserted=upserted, removed_stale=removed)


@dataclass
class DeleteDocumentInput:
    tenant: str
    document_id: str


@activity.defn(name="keel.delete_document")
@heartbeating
def delete_document(inp: DeleteDocumentInput) -> None:
    try:
        runtime().index.delete_document(inp.tenant, inp.document_id)
    except KeelError as e:
        raise to_application_error(e) from None


@dataclass
class SetReadersInput:
    tenant: str
    document_id: str
    readers: list[str] = field(default_factory=list)  # empty: everyone in the tenant


@dataclass
class SetReadersOutput:
    chunks: int  # points of the document updated (0: not indexed)


@activity.defn(name="keel.set_readers")
@heartbeating
def set_readers(inp: SetReadersInput) -> SetReadersOutput:
    try:
        return SetReadersOutput(chunks=runtime().index.set_readers(inp.tenant, inp.document_id, inp.readers))
    except KeelError as e:
        raise to_application_error(e) from None


@dataclass
class SearchInput:
    tenant: str
    query: str
    settings: RetrievalSettings | None = None  # None: the worker's defaults
    filters: Filters | None = None
    embedding: EmbeddingSpec | None = None
    # Who asks: only chunks of documents without readers, or readable by this user or one of
    # these groups, are searched. No principal and no groups: documents without readers only.
    principal: str | None = None
    groups: list[str] = field(default_factory=list)
    # The query's embedding, when a step before computed it (keel.embed_query); None: embed here.
    vector: list[float] | None = None


@dataclass
class EmbedQueryInput:
    query: str
    embedding: EmbeddingSpec | None = None  # None: the worker's default model


@dataclass
class QueryVector:
    vector: list[float]
    model: str


@activity.defn(name="keel.embed_query")
def embed_query(inp: EmbedQueryInput) -> QueryVector:
    """A query's embedding, a step of its own so a re-run that changes only search settings
    (``keel whatif --set top_k=12``) reuses it."""
    rt = runtime()
    spec = inp.embedding or rt.settings.embedding_spec
    vector = rt.embedder(spec).embed_query(inp.query)
    return QueryVector([round(float(x), 6) for x in vector], spec.model)


@dataclass
class PassageSimilarityInput:
    query: str
    passages: list[str]
    embedding: EmbeddingSpec | None = None  # None: the worker's default model


@dataclass
class PassageSimilarity:
    scores: list[float]  # cosine of each passage with the query, in order


@activity.defn(name="keel.passage_similarity")
def passage_similarity(inp: PassageSimilarityInput) -> PassageSimilarity:
    """How close each passage of the retrieved chunks is in meaning to the question (the
    sentence embeddings' cosine), for :func:`keel.steps.rank_passages`."""
    rt = runtime()
    vectors = rt.embedder(inp.embedding or rt.settings.embedding_spec).embed([inp.query, *inp.passages])
    return PassageSimilarity([round(float(x), 4) for x in vectors[1:] @ vectors[0]])


@activity.defn(name="keel.hybrid_search")
def hybrid_search(inp: SearchInput) -> SearchResult:
    rt = runtime()
    settings = inp.settings or rt.settings.retrieval_settings
    spec = inp.embedding or rt.settings.embedding_spec
    start = time.monotonic()
    try:
        vector = np.asarray(inp.vector, dtype=np.float32) if inp.vector is not None else rt.embedder(spec).embed_query(inp.query)
        hits = rt.index.search(
            inp.tenant, inp.query, vector, top_k=settings.top_k, prefetch_k=settings.prefetch_k, filters=inp.filters,
            principals=asker_principals(inp.principal, inp.groups),
        )
    except KeelError as e:
        raise to_application_error(e) from None
    telemetry.retrieval(inp.tenant, time.monotonic() - start, len(hits))
    for h in hits:
        h.score, h.fused_score = round(h.score, 4), round(h.fused_score, 4)
    return SearchResult(hits=hits, embedding_model=spec.model, settings=settings, filters=inp.filters)


@dataclass
class IndexedVersionsInput:
    tenant: str
    document_ids: list[str]


@dataclass
class IndexedVersions:
    versions: dict[str, str]  # document id -> version of the indexed copy


@activity.defn(name="keel.indexed_versions")
@heartbeating
def indexed_versions(inp: IndexedVersionsInput) -> IndexedVersions:
    return IndexedVersions(versions=runtime().index.indexed_versions(inp.tenant, inp.document_ids))


@dataclass
class IndexStatsInput:
    tenant: str


@dataclass
class IndexStatsOutput:
    documents: int
    chunks: int


@activity.defn(name="keel.index_stats")
def index_stats(inp: IndexStatsInput) -> IndexStatsOutput:
    try:
        stats = runtime().index.stats(inp.tenant)
    except KeelError as e:
        raise to_application_error(e) from None
    return IndexStatsOutput(**stats)


@dataclass
class EraseTenantInput:
    tenant: str


@dataclass
class ErasedData:
    index_points: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    cache_entries: int = 0


@activity.defn(name="keel.erase_tenant_data")
def erase_tenant_data(inp: EraseTenantInput) -> ErasedData:
    from keel.llm.cache import forget_tenant as forget_cache

    rt = runtime()
    points = rt.index.delete_tenant(inp.tenant)
    blobs, size = rt.blobs.forget_tenant(inp.tenant)
    return ErasedData(index_points=points, blobs=blobs, blob_bytes=size, cache_entries=forget_cache(rt.settings, inp.tenant))


INDEX_ACTIVITIES = [
    index_document, delete_document, set_readers, hybrid_search, embed_query, passage_similarity, indexed_versions, index_stats, erase_tenant_data,
]
