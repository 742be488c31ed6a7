"""Upload a document's bytes for ingest, from a service that shares no filesystem with the
workers."""

from __future__ import annotations

import base64
import uuid

from keel.config import KeelSettings
from keel.errors import DocumentTooLarge

MAX_UPLOAD_BYTES = 1_500_000
"""The bytes travel once, sealed, in the upload run's input; Temporal refuses payloads over
2 MB, so larger documents go where workers read them (``keel ingest PATH``)."""


async def upload_document(
    client,
    tenant: str,
    filename: str,
    data: bytes,
    *,
    tags: list[str] | None = None,
    date: str | None = None,
    readers: list[str] | None = None,
    settings: KeelSettings | None = None,
    wait: bool = True,
):
    """Ingest ``data`` as the document ``filename`` of ``tenant``: it is put into the blob store
    and goes through the same pipeline as a listed file (partition, scrub, chunk, embed, index;
    raw bytes discarded once indexed). Returns the ``IngestDocumentOutput`` (or the run's handle
    with ``wait=False``). Uploading the same filename again replaces that document. ``readers``:
    the principals who may read it (``user:NAME``, ``group:NAME``; empty: everyone in the tenant).

    ``client`` needs ``KeelPlugin`` (the upload is sealed with the tenant's key). Too large a
    document fails before anything is sent:

    >>> import asyncio
    >>> asyncio.run(upload_document(None, "acme", "scan.pdf", bytes(2_000_000)))
    Traceback (most recent call last):
    keel.errors.DocumentTooLarge: scan.pdf: 2000000 bytes; an upload carries at most 1500000 (ingest larger files from a path the workers read)

    With a client::

        out = await keel.upload_document(client, "acme", "policy.md", b"# Refunds ...", tags=["policy"])
        print(out.document_id, out.chunks)
    """
    from keel.activities.ingest import UploadInput
    from keel.types import reader_names
    from keel.workflows.upload import IngestUpload, IngestUploadInput

    if len(data) > MAX_UPLOAD_BYTES:
        raise DocumentTooLarge(
            f"{filename}: {len(data)} bytes; an upload carries at most {MAX_UPLOAD_BYTES} (ingest larger files from a path the workers read)"
        )
    settings = settings or KeelSettings()
    inp = settings.ingest_input(tenant, [])
    upload = UploadInput(tenant, filename, base64.b64encode(data).decode(), list(tags or []), date, reader_names(readers))
    handle = await client.start_workflow(
        IngestUpload.run,
        IngestUploadInput(upload, inp.settings),
        id=f"upload-{tenant}-{uuid.uuid4().hex[:12]}",
        task_queue=settings.task_queue,
    )
    return await handle.result() if wait else handle
