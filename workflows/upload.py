"""Ingest one uploaded document: for services that do not share a filesystem with the workers
(``keel.upload_document``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.activities.ingest import DocumentEntry, UploadInput, store_upload
    from keel.workflows.ingest import IngestDocument, IngestDocumentInput, IngestDocumentOutput, IngestSettings, document_workflow_id


@dataclass
class IngestUploadInput:
    upload: UploadInput
    settings: IngestSettings = field(default_factory=IngestSettings)


@workflow.defn(sandboxed=False)
class IngestUpload:
    @workflow.run
    async def run(self, inp: IngestUploadInput) -> IngestDocumentOutput:
        up = inp.upload
        # A local activity: its input (the document) is not recorded again in history, only the
        # entry it returns. From here on the document is a blob key like any listed file.
        entry: DocumentEntry = await workflow.execute_local_activity(
            store_upload, up, start_to_close_timeout=timedelta(minutes=1)
        )
        return await workflow.execute_child_workflow(
            IngestDocument.run,
            IngestDocumentInput(up.tenant, entry, inp.settings),
            id=document_workflow_id(up.tenant, entry),
        )
