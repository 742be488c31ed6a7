"""Index and search activities. With the embedded store they run only on the index task queue,
served by the one worker process that owns the store."""

from __future__ import annotations

import io

import numpy as np
from temporalio import activity

from activities._runtime import heartbeating, runtime
from keel.contracts import (
    IndexedVersionsInput,
    IndexedVersionsOutput,
    IndexInput,
    IndexOutput,
    IndexStatsInput,
    IndexStatsOutput,
    RetrievedChunk,
    RetrieveInput,
    RetrieveOutput,
)
from keel.errors import KeelError, to_application_error


@activity.defn
@heartbeating
def index_chunks(inp: IndexInput) -> IndexOutput:
    rt = runtime()
    chunks = rt.blobs.get_json(inp.chunks_key)
    vectors = np.load(io.BytesIO(rt.blobs.get(inp.vectors_key)), allow_pickle=False)
    with rt.index_lock:
        upserted, removed = rt.index.replace_document(
            tenant=inp.tenant,
            document_id=inp.document_id,
            source=inp.source,
            content_hash=inp.content_hash,
            chunks=chunks,
            vectors=vectors,
            tags=inp.tags,
            date=inp.date,
        )
    return IndexOutput(upserted=upserted, removed_stale=removed)


@activity.defn
@heartbeating
def retrieve(inp: RetrieveInput) -> RetrieveOutput:
    from retrieval.store import SearchFilters

    rt = runtime()
    f = inp.filters
    filters = SearchFilters(source=f.source, tags=tuple(f.tags), date_from=f.date_from, date_to=f.date_to) if f else None
    vector = rt.embedder.embed_query(inp.query)
    try:
        with rt.index_lock:
            hits = rt.index.search(
                inp.tenant, inp.query, vector, top_k=inp.top_k, prefetch_k=inp.prefetch_k, filters=filters
            )
    except KeelError as e:
        raise to_application_error(e) from None
    return RetrieveOutput(
        chunks=[RetrievedChunk(h.chunk_id, h.source, h.text, round(h.score, 4), round(h.fused_score, 4)) for h in hits],
        embedding_model=rt.settings.embedding_model,
    )


@activity.defn
@heartbeating
def indexed_versions(inp: IndexedVersionsInput) -> IndexedVersionsOutput:
    rt = runtime()
    with rt.index_lock:
        return IndexedVersionsOutput(content_hashes=rt.index.indexed_versions(inp.tenant, inp.document_ids))


@activity.defn
@heartbeating
def index_stats(inp: IndexStatsInput) -> IndexStatsOutput:
    rt = runtime()
    try:
        with rt.index_lock:
            stats = rt.index.stats(inp.tenant)
    except KeelError as e:
        raise to_application_error(e) from None
    return IndexStatsOutput(**stats)


INDEX_ACTIVITIES = [index_chunks, indexed_versions, retrieve, index_stats]
