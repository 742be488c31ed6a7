"""Keel's durable steps, callable from any workflow.

Inside a workflow each call is an activity with the step's default options
(:data:`keel.options.STEP_DEFAULTS`), overridable per call with ``options=StepOptions(...)``.
Outside a workflow the same call runs the same code in-process (in a thread), so a pipeline's
logic can be tried and tested without Temporal; errors are then Keel's typed errors
(:mod:`keel.errors`) instead of Temporal's ``ApplicationError`` with the same type name.

Large data stays out of workflow history: documents, elements, chunks and vectors live in the
blob store and steps pass :class:`~keel.types.Elements`, :class:`~keel.types.Chunks` and
:class:`~keel.types.Vectors` (keys and counts) between them.

>>> import asyncio
>>> from keel import steps, ChunkSpec
>>> async def pipeline():
...     elements = await steps.partition(b"# Hours\\nOpen daily from 9 to 5.", filename="hours.md")
...     chunks = await steps.chunk(elements, spec=ChunkSpec(max_tokens=50, overlap_tokens=5))
...     return [c.text for c in await steps.read_chunks(chunks)]
>>> asyncio.run(pipeline())
['Hours\\nOpen daily from 9 to 5.']
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import workflow

from keel import _deployment
from keel.activities import index as _index
from keel.activities import ingest as _ingest
from keel.activities.index import IndexStatsOutput
from keel.activities.ingest import DocumentEntry, Manifest
from keel.errors import from_application_error
from keel.llm import prompts
from keel.llm.prompts import RankedPassage
from keel.options import STEP_DEFAULTS, StepOptions
from keel.types import (
    ChunkSpec,
    Chunks,
    ChunkText,
    Elements,
    EmbeddingSpec,
    Filters,
    IndexResult,
    PIIPolicy,
    RetrievalSettings,
    SearchResult,
    Vectors,
)

R = TypeVar("R")

__all__ = [
    "chunk",
    "delete_document",
    "discard",
    "embed",
    "hybrid_search",
    "index_document",
    "index_stats",
    "indexed_versions",
    "list_documents",
    "manifest_page",
    "partition",
    "rank_passages",
    "read_chunks",
    "scrub_pii",
    "set_readers",
]


async def _run(step: str, fn: Callable[[Any], R], arg: Any, options: StepOptions | None, *, index: bool = False) -> R:
    """Run ``fn(arg)`` as the durable step ``step`` (in a workflow) or in-process (outside one)."""
    if not workflow.in_workflow():
        try:
            if asyncio.iscoroutinefunction(fn):
                return await fn(arg)
            return await asyncio.to_thread(fn, arg)
        except Exception as e:
            typed = from_application_error(e)
            if typed is e:
                raise
            raise typed from None
    o = STEP_DEFAULTS[step].merged(options)
    local = o.local
    if local is None:  # an index read: local where this workflow runs on the index owner's queue
        local = o.task_queue is None and _on_index_owner()
    if local:
        return await workflow.execute_local_activity(
            fn,
            arg,
            start_to_close_timeout=o.start_to_close_timeout,
            schedule_to_close_timeout=o.schedule_to_close_timeout,
            retry_policy=o.retry_policy,
        )
    task_queue = o.task_queue or (_deployment.current().index_task_queue if index else None)
    return await workflow.execute_activity(
        fn,
        arg,
        task_queue=task_queue,
        start_to_close_timeout=o.start_to_close_timeout,
        schedule_to_close_timeout=o.schedule_to_close_timeout,
        heartbeat_timeout=o.heartbeat_timeout,
        retry_policy=o.retry_policy,
    )


_INDEX_OWNER = "keel-index-reads-local"


def _on_index_owner() -> bool:
    """Whether this run reads the index as local activities: it runs on the index owner's queue.

    Decided once per run and recorded as a marker, so a replay anywhere (another worker, the
    ``Replayer``, whose task queue is its own) takes the same path as the original run.
    """
    if workflow.unsafe.is_replaying() or workflow.info().task_queue == _deployment.current().index_task_queue:
        return workflow.patched(_INDEX_OWNER)  # replaying: whether the run recorded it
    return False


# --- documents -------------------------------------------------------------------------------


async def partition(source: bytes | str, *, filename: str, options: StepOptions | None = None) -> Elements:
    """Partition a document into typed text elements (``unstructured``); ``filename``'s suffix
    picks the parser (.txt, .md, .html, .pdf, .docx).

    :param source: the document's bytes (small documents: they enter workflow history), or the
        key of its bytes in the blob store (e.g. a ``DocumentEntry.content_hash``).
    :raises: ``EmptyDocument``, ``CorruptDocument``, ``BinaryContent``, ``InvalidEncoding``,
        ``UnsupportedFormat``, ``DocumentTooLarge``: non-retryable.
    """
    if isinstance(source, (bytes, bytearray)):
        inp = _ingest.PartitionInput(filename=filename, data_b64=base64.b64encode(bytes(source)).decode())
    else:
        inp = _ingest.PartitionInput(filename=filename, blob_key=source)
    return await _run("partition", _ingest.partition_document, inp, options)


async def scrub_pii(
    value: str | Elements, *, policy: PIIPolicy | None = None, options: StepOptions | None = None
) -> Any:
    """Replace personal data with ``<ENTITY_TYPE>`` placeholders (presidio), by ``policy``.

    A ``str`` (a question, a ticket) returns :class:`~keel.types.ScrubbedText` (a local
    activity by default); :class:`~keel.types.Elements` (a document) returns scrubbed
    ``Elements`` with ``pii_counts`` (a regular activity: long documents take a while).
    """
    if isinstance(value, Elements):
        return await _run("scrub_document", _ingest.scrub_elements, _ingest.ScrubElementsInput(value, policy), options)
    return await _run("scrub_pii", _ingest.scrub_text, _ingest.ScrubTextInput(value, policy), options)


async def chunk(elements: Elements, *, spec: ChunkSpec | None = None, options: StepOptions | None = None) -> Chunks:
    """Cut elements into chunks along the document's sections (see :class:`~keel.types.ChunkSpec`)."""
    return await _run("chunk", _ingest.chunk_document, _ingest.ChunkInput(elements, spec), options)


async def read_chunks(
    chunks: Chunks, *, start: int = 0, limit: int | None = None, options: StepOptions | None = None
) -> list[ChunkText]:
    """The text of chunks ``start`` to ``start + limit``: e.g. to prompt an LLM with them (the
    text then enters history once; read a long document a page at a time)."""
    out = await _run("read_chunks", _ingest.read_chunks, _ingest.ReadChunksInput(chunks, start, limit), options)
    return out.chunks


async def embed(chunks: Chunks, *, spec: EmbeddingSpec | None = None, options: StepOptions | None = None) -> Vectors:
    """Embed every chunk (``sentence-transformers``, normalised float32)."""
    return await _run("embed", _ingest.embed_chunks, _ingest.EmbedInput(chunks, spec), options)


# --- the index -------------------------------------------------------------------------------


async def index_document(
    tenant: str,
    document_id: str,
    chunks: Chunks,
    vectors: Vectors,
    *,
    source: str = "",
    version: str = "",
    tags: list[str] | None = None,
    date: str | None = None,
    readers: list[str] | None = None,
    options: StepOptions | None = None,
) -> IndexResult:
    """Index (or replace) a document: upsert this version's chunks with their dense and BM25
    vectors, then remove every other version's. Idempotent: a retry rewrites the same points.

    :param version: names this version (default: the chunks' content key).
    :param source: what hits report as their source (default: the document id).
    :param tags: filterable tags; :param date: the document's ISO date (filterable by range).
    :param readers: the principals who may read it (``user:NAME``, ``group:NAME``); empty:
        everyone in the tenant. Change them later with :func:`set_readers`.
    """
    inp = _index.IndexDocumentInput(
        tenant, document_id, chunks, vectors, source, version, list(tags or []), date, list(readers or [])
    )
    return await _run("index_document", _index.index_document, inp, options, index=True)


async def discard(keys: list[str], *, options: StepOptions | None = None) -> int:
    """Delete blobs of this run's tenant that it no longer needs (a document's raw bytes and
    pre-scrub elements once it is indexed); how many existed. Idempotent.

    >>> import asyncio
    >>> from keel import steps
    >>> elements = asyncio.run(steps.partition(b"Call Jane on 555-0100.", filename="note.txt"))
    >>> asyncio.run(steps.discard([elements.key])), asyncio.run(steps.discard([elements.key]))
    (1, 0)
    """
    return await _run("discard", _ingest.discard_blobs, _ingest.DiscardInput(list(keys)), options)


async def delete_document(tenant: str, document_id: str, *, options: StepOptions | None = None) -> None:
    """Remove every chunk of a document from the tenant's index."""
    await _run("delete_document", _index.delete_document, _index.DeleteDocumentInput(tenant, document_id), options, index=True)


async def set_readers(
    tenant: str, document_id: str, readers: list[str], *, options: StepOptions | None = None
) -> int:
    """Replace who may read an indexed document (``user:NAME``, ``group:NAME``; empty: everyone
    in the tenant), in place: nothing is re-embedded, the next search sees it. Returns the
    document's chunk count (0: not indexed). A later ingest of a changed file (or of new
    metadata) indexes the readers it lists."""
    out = await _run(
        "set_readers", _index.set_readers, _index.SetReadersInput(tenant, document_id, list(readers)), options, index=True
    )
    return out.chunks


async def hybrid_search(
    tenant: str,
    query: str,
    *,
    top_k: int | None = None,
    filters: Filters | None = None,
    settings: RetrievalSettings | None = None,
    embedding: EmbeddingSpec | None = None,
    principal: str | None = None,
    groups: list[str] | None = None,
    options: StepOptions | None = None,
) -> SearchResult:
    """Dense + BM25 search inside the tenant, fused with reciprocal rank fusion, narrowed by
    ``filters`` (source, document, tags, date range) and to what the asker may read. The result
    records the settings used.

    :param principal: the asking user (``alice`` or ``user:alice``); :param groups: its groups.
        Only documents without readers, or whose readers include the user or one of the groups,
        are searched (inside the index, not after it). Neither: documents without readers only.
    :param top_k: shorthand for ``settings.top_k``.
    :raises: ``MissingTenant``, ``InvalidFilter``: non-retryable.
    """
    if top_k is not None:
        base = settings or RetrievalSettings()
        settings = RetrievalSettings(top_k=top_k, prefetch_k=max(base.prefetch_k, top_k), min_relevance=base.min_relevance)
    inp = _index.SearchInput(tenant, query, settings, filters, embedding, principal, list(groups or []))
    if workflow.in_workflow() and workflow.patched("keel-embed-query"):
        # 0.5: the query's embedding is a step of its own (a what-if re-run with other search
        # settings reuses it); runs recorded before embed inside the search.
        opts = StepOptions(task_queue=options.task_queue, local=options.local) if options else None
        inp.vector = (await _run("embed_query", _index.embed_query, _index.EmbedQueryInput(query, embedding), opts, index=True)).vector
    return await _run("hybrid_search", _index.hybrid_search, inp, options, index=True)


async def rank_passages(question: str, found: SearchResult, *, options: StepOptions | None = None) -> list[RankedPassage]:
    """The passages of ``found``'s chunks, best answer to ``question`` first: words shared
    (BM25-weighted), closeness in meaning (one embedding step, on the index queue like a search)
    and the kind of fact asked for (:func:`keel.llm.prompts.rank_passages`). What the
    extractive floor answers with, and what a model's figures are checked against.

    >>> import asyncio
    >>> from keel.types import SearchHit, SearchResult
    >>> found = SearchResult([SearchHit("c1", "d1", "ferry.txt", "The ferry leaves at 13:30. Tickets are sold on board.", 0.6, 0.05)], "all-MiniLM-L6-v2")
    >>> asyncio.run(rank_passages("What time does the ferry depart?", found))[0].text
    'The ferry leaves at 13:30.'
    """
    passages = prompts.candidate_passages(found.hits)
    if not passages:
        return []
    inp = _index.PassageSimilarityInput(question, passages, EmbeddingSpec(found.embedding_model) if found.embedding_model else None)
    similarity = await _run("passage_similarity", _index.passage_similarity, inp, options, index=True)
    return prompts.rank_passages(question, found.hits, similarity.scores)


async def indexed_versions(tenant: str, document_ids: list[str], *, options: StepOptions | None = None) -> dict[str, str]:
    """The version of each of ``document_ids`` the index holds (absent: not indexed)."""
    out = await _run(
        "indexed_versions", _index.indexed_versions, _index.IndexedVersionsInput(tenant, document_ids), options, index=True
    )
    return out.versions


async def index_stats(tenant: str, *, options: StepOptions | None = None) -> IndexStatsOutput:
    """Documents and chunks in the tenant's index."""
    return await _run("index_stats", _index.index_stats, _index.IndexStatsInput(tenant), options, index=True)


# --- corpora -----------------------------------------------------------------------------------


async def list_documents(
    tenant: str, paths: list[str], *, tags: list[str] | None = None, date: str | None = None,
    readers: list[str] | None = None, options: StepOptions | None = None,
) -> Manifest:
    """Snapshot files and folders (on the worker) into the blob store: a manifest of
    :class:`~keel.activities.ingest.DocumentEntry` (path, document id, content hash, metadata
    from ``FILE.meta.json`` sidecars; ``readers``: who may read them, unless a sidecar says)."""
    inp = _ingest.ListDocumentsInput(tenant, list(paths), list(tags or []), date, list(readers or []))
    return await _run("list_documents", _ingest.list_documents, inp, options)


async def manifest_page(
    manifest: Manifest, offset: int, limit: int, *, options: StepOptions | None = None
) -> list[DocumentEntry]:
    """Entries ``offset`` to ``offset + limit`` of a manifest."""
    page = await _run("read_manifest_page", _ingest.read_manifest_page, _ingest.ManifestPageInput(manifest, offset, limit), options)
    return page.entries
