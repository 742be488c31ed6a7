"""Ingestion state machines: a corpus fans out to one child workflow per document.

Written only with Keel's public steps (``keel.steps``), like any user's pipeline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from keel import steps
    from keel.activities.ingest import DocumentEntry, Manifest
    from keel import telemetry
    from keel.errors import failure_reason
    from keel.types import ChunkSpec, EmbeddingSpec, PIIPolicy

MAX_RECORDED_FAILURES = 200  # all failures are counted; this many are listed in the result


@dataclass
class IngestSettings:
    """The settings of an ingest; ``None`` fields take the worker's defaults (``KeelSettings``),
    and the result records what was used."""

    chunk: ChunkSpec | None = None
    pii: PIIPolicy | None = None
    embedding: EmbeddingSpec | None = None
    # "delete": a document's raw bytes and pre-scrub elements are deleted once it is indexed.
    raw_retention: str = "delete"


@dataclass
class IngestDocumentInput:
    tenant: str
    document: DocumentEntry
    settings: IngestSettings = field(default_factory=IngestSettings)


@dataclass
class IngestDocumentOutput:
    document_id: str
    path: str
    chunks: int
    pii_counts: dict[str, int]
    settings: IngestSettings


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
    settings: IngestSettings | None = None  # as used by the documents indexed (None: nothing indexed)

    @property
    def done(self) -> int:
        return self.indexed + self.unchanged + self.failed


@dataclass
class IngestCorpusInput:
    tenant: str
    paths: list[str] = field(default_factory=list)
    concurrency: int = 8
    documents_per_run: int = 200  # continue-as-new after this many, to bound history
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    settings: IngestSettings = field(default_factory=IngestSettings)
    # Principals who may read the documents (``user:NAME``, ``group:NAME``; a sidecar's
    # "readers" replace them per file). Empty: everyone in the tenant.
    readers: list[str] = field(default_factory=list)
    # Set by the workflow itself when it continues as new.
    manifest: Manifest | None = None
    offset: int = 0
    summary: IngestSummary | None = None


def document_workflow_id(tenant: str, entry: DocumentEntry) -> str:
    return f"ingest-doc-{tenant}-{entry.document_id[:16]}-{entry.indexed_version[:16]}"


@workflow.defn(sandboxed=False)
class IngestDocument:
    """partition → scrub PII → chunk → embed → index, for one document version."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        doc, s = inp.document, inp.settings
        if doc.path_error:
            raise ApplicationError(doc.path_error, type="PathNotAllowed", non_retryable=True)
        if doc.metadata_error:
            raise ApplicationError(doc.metadata_error, type="InvalidMetadata", non_retryable=True)
        try:
            elements = await steps.partition(doc.content_hash, filename=doc.path)
            # Scrubbing happens before anything is embedded, indexed or shown to an LLM.
            scrubbed = await steps.scrub_pii(elements, policy=s.pii)
            chunks = await steps.chunk(scrubbed, spec=s.chunk)
            vectors = await steps.embed(chunks, spec=s.embedding)
            # No schedule-to-close timeout: if the index owner is down, the write waits for it.
            await steps.index_document(
                inp.tenant, doc.document_id, chunks, vectors,
                source=doc.path, version=doc.indexed_version, tags=doc.tags, date=doc.date, readers=doc.readers,
            )
            # Personal data the scrubber saw is kept only as long as it is needed.
            if s.raw_retention == "delete" and workflow.patched("keel-discard-raw"):
                await steps.discard([doc.content_hash, elements.key])
        except ActivityError as e:
            # Fail this document with the step's own typed reason, readable in the UI.
            error_type, message = failure_reason(e)
            raise ApplicationError(message, type=error_type, non_retryable=True) from e
        used = IngestSettings(chunk=chunks.spec, pii=scrubbed.pii_policy, embedding=EmbeddingSpec(vectors.model))
        return IngestDocumentOutput(doc.document_id, doc.path, chunks.count, scrubbed.pii_counts, used)


@workflow.defn(sandboxed=False)
class IngestCorpus:
    """Ingest every document under the given paths, ``concurrency`` children at a time.

    Re-ingesting unchanged content is a no-op: documents whose indexed version is the listed
    one start no child at all. Any other document (new, changed, or changed back to an earlier
    version) runs a child whose workflow id is derived from tenant, document and version, so two
    concurrent ingests of the same content run it once. A corpus of any size keeps a bounded
    history by continuing as new every ``documents_per_run`` documents.
    """

    def __init__(self) -> None:
        self._summary = IngestSummary()

    @workflow.query
    def progress(self) -> IngestSummary:
        return self._summary

    @workflow.run
    async def run(self, inp: IngestCorpusInput) -> IngestSummary:
        self._summary = inp.summary or self._summary
        manifest = inp.manifest
        if manifest is None:
            manifest = await steps.list_documents(
                inp.tenant, inp.paths, tags=inp.tags, date=inp.date, readers=inp.readers
            )
            self._summary.total = manifest.count

        page = await steps.manifest_page(manifest, inp.offset, inp.documents_per_run)
        # Asking the index (not workflow ids) what is current stays right when a file is
        # changed back to an earlier version, or when the index was rebuilt.
        indexed = await steps.indexed_versions(inp.tenant, [e.document_id for e in page])
        todo = [e for e in page if indexed.get(e.document_id) != e.indexed_version]
        self._summary.unchanged += len(page) - len(todo)
        slots = asyncio.Semaphore(inp.concurrency)
        await asyncio.gather(*(self._ingest(inp, entry, slots) for entry in todo))

        offset = inp.offset + len(page)
        if offset < manifest.count:
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                IngestCorpusInput(
                    tenant=inp.tenant,
                    concurrency=inp.concurrency,
                    documents_per_run=inp.documents_per_run,
                    settings=inp.settings,
                    manifest=manifest,
                    offset=offset,
                    summary=self._summary,
                )
            )
        return self._summary

    async def _ingest(self, inp: IngestCorpusInput, entry: DocumentEntry, slots: asyncio.Semaphore) -> None:
        child_id = document_workflow_id(inp.tenant, entry)
        async with slots:
            try:
                result = await workflow.execute_child_workflow(
                    IngestDocument.run,
                    IngestDocumentInput(tenant=inp.tenant, document=entry, settings=inp.settings),
                    id=child_id,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
            except WorkflowAlreadyStartedError:
                # Another ingest is indexing this exact content right now.
                self._summary.unchanged += 1
                return
            except ChildWorkflowError as e:
                self._summary.failed += 1
                error_type, message = failure_reason(e)
                telemetry.document_failed(inp.tenant, error_type)  # replay-safe (workflow.metric_meter)
                if len(self._summary.failures) < MAX_RECORDED_FAILURES:
                    self._summary.failures.append(DocumentFailure(entry.path, error_type, message, child_id))
                return
        self._summary.indexed += 1
        telemetry.document_ingested(inp.tenant)
        self._summary.chunks += result.chunks
        self._summary.settings = result.settings
