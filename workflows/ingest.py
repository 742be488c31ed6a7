"""Ingestion state machines: a corpus fans out to one child workflow per document."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.index import index_chunks, indexed_versions
    from activities.ingest import (
        chunk_document,
        embed_chunks,
        list_documents,
        partition_document,
        read_manifest_page,
        scrub_document,
    )
    from keel.contracts import (
        ChunkInput,
        DocumentEntry,
        DocumentFailure,
        EmbedInput,
        IndexedVersionsInput,
        IndexInput,
        IngestCorpusInput,
        IngestDocumentInput,
        IngestDocumentOutput,
        IngestSummary,
        ListDocumentsInput,
        ManifestPageInput,
        PartitionInput,
        ScrubDocumentInput,
    )
    from keel.errors import NON_RETRYABLE

# Bad input fails at once; anything else (a worker crash, a full disk) is retried with backoff.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE,
)
# Activities heartbeat every few seconds; a worker that dies mid-step is noticed this fast.
HEARTBEAT = timedelta(seconds=30)
MAX_RECORDED_FAILURES = 200  # all failures are counted; this many are listed in the result


def document_workflow_id(tenant: str, entry: DocumentEntry) -> str:
    return f"ingest-doc-{tenant}-{entry.document_id[:16]}-{entry.indexed_version[:16]}"


def failure_reason(err: BaseException) -> tuple[str, str]:
    """(error type, message) of the innermost cause of a child workflow or activity failure."""
    while isinstance(err, (ChildWorkflowError, ActivityError)) and err.cause is not None:
        err = err.cause
    kind = err.type if isinstance(err, ApplicationError) and err.type else type(err).__name__
    return kind, err.message if isinstance(err, FailureError) else str(err)


@workflow.defn
class IngestDocument:
    """partition → scrub PII → chunk → embed → index, for one document version."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        if inp.metadata_error:
            raise ApplicationError(inp.metadata_error, type="InvalidMetadata", non_retryable=True)
        try:
            parts = await workflow.execute_activity(
                partition_document,
                PartitionInput(path=inp.path, content_hash=inp.content_hash),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=STEP_RETRY,
            )
            # Scrubbing happens before anything is embedded, indexed or shown to an LLM.
            scrubbed = await workflow.execute_activity(
                scrub_document,
                ScrubDocumentInput(elements_key=parts.elements_key),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=STEP_RETRY,
            )
            chunks = await workflow.execute_activity(
                chunk_document,
                ChunkInput(elements_key=scrubbed.elements_key),
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=STEP_RETRY,
            )
            embedded = await workflow.execute_activity(
                embed_chunks,
                EmbedInput(chunks_key=chunks.chunks_key),
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=STEP_RETRY,
            )
            # No schedule-to-start timeout: if the index owner is down, the task waits for it.
            await workflow.execute_activity(
                index_chunks,
                IndexInput(
                    tenant=inp.tenant,
                    document_id=inp.document_id,
                    source=inp.path,
                    content_hash=inp.version or inp.content_hash,
                    chunks_key=chunks.chunks_key,
                    vectors_key=embedded.vectors_key,
                    tags=inp.tags,
                    date=inp.date,
                ),
                task_queue=inp.index_task_queue,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE),
            )
        except ActivityError as e:
            # Fail this document with the step's own typed reason, readable in the UI.
            error_type, message = failure_reason(e)
            raise ApplicationError(message, type=error_type, non_retryable=True) from e
        return IngestDocumentOutput(
            document_id=inp.document_id, path=inp.path, chunks=chunks.chunks, pii_counts=scrubbed.pii_counts
        )


@workflow.defn
class IngestCorpus:
    """Ingest every document under the given paths, ``concurrency`` children at a time.

    Re-ingesting unchanged content is a no-op: documents whose indexed version has the same
    content hash start no child at all. Any other document (new, changed, or changed back to an
    earlier version) runs a child whose workflow id is derived from tenant, document and
    content hash, so two concurrent ingests of the same content run it once. A corpus of any
    size keeps a bounded history by continuing as new every ``documents_per_run`` documents.
    """

    def __init__(self) -> None:
        self._summary = IngestSummary()

    @workflow.query
    def progress(self) -> IngestSummary:
        return self._summary

    @workflow.run
    async def run(self, inp: IngestCorpusInput) -> IngestSummary:
        if inp.summary is not None:
            self._summary = inp.summary
        manifest_key, total = inp.manifest_key, inp.total
        if manifest_key is None:
            listed = await workflow.execute_activity(
                list_documents,
                ListDocumentsInput(tenant=inp.tenant, paths=inp.paths, tags=inp.tags, date=inp.date),
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["FileNotFoundError", *NON_RETRYABLE]),
            )
            manifest_key, total = listed.manifest_key, listed.count
            self._summary.total = total

        page = await workflow.execute_activity(
            read_manifest_page,
            ManifestPageInput(manifest_key=manifest_key, offset=inp.offset, limit=inp.documents_per_run),
            start_to_close_timeout=timedelta(minutes=2),
        )
        # Asking the index (not workflow ids) what is current stays right when a file is
        # changed back to an earlier version, or when the index was rebuilt.
        indexed = await workflow.execute_activity(
            indexed_versions,
            IndexedVersionsInput(tenant=inp.tenant, document_ids=[e.document_id for e in page.entries]),
            task_queue=inp.index_task_queue,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE),
        )
        todo = [e for e in page.entries if indexed.content_hashes.get(e.document_id) != e.indexed_version]
        self._summary.unchanged += len(page.entries) - len(todo)
        slots = asyncio.Semaphore(inp.concurrency)
        await asyncio.gather(*(self._ingest(inp, entry, slots) for entry in todo))

        offset = inp.offset + len(page.entries)
        if offset < total:
            workflow.continue_as_new(
                IngestCorpusInput(
                    tenant=inp.tenant,
                    concurrency=inp.concurrency,
                    documents_per_run=inp.documents_per_run,
                    index_task_queue=inp.index_task_queue,
                    manifest_key=manifest_key,
                    total=total,
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
                    IngestDocumentInput(
                        tenant=inp.tenant,
                        document_id=entry.document_id,
                        path=entry.path,
                        content_hash=entry.content_hash,
                        index_task_queue=inp.index_task_queue,
                        tags=entry.tags,
                        date=entry.date,
                        version=entry.indexed_version,
                        metadata_error=entry.metadata_error,
                    ),
                    id=child_id,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
            except WorkflowAlreadyStartedError:
                # Another ingest is indexing this exact content right now.
                self._summary.unchanged += 1
                return
            except ChildWorkflowError as e:
                self._summary.failed += 1
                if len(self._summary.failures) < MAX_RECORDED_FAILURES:
                    error_type, message = failure_reason(e)
                    self._summary.failures.append(DocumentFailure(entry.path, error_type, message, child_id))
                return
        self._summary.indexed += 1
        self._summary.chunks += result.chunks
