"""Ingestion activities: thin adapters from Temporal to ``ingestion/``.

Each reads its input from the blob store by key and writes its output there, so only keys and
counts enter workflow history. All are idempotent: blob keys are content hashes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
from temporalio import activity

from activities._runtime import heartbeating, runtime
from keel.contracts import (
    ChunkInput,
    ChunkOutput,
    DocumentEntry,
    EmbedInput,
    EmbedOutput,
    ListDocumentsInput,
    ListDocumentsOutput,
    ManifestPage,
    ManifestPageInput,
    PartitionInput,
    PartitionOutput,
    ScrubDocumentInput,
    ScrubDocumentOutput,
)
from keel.errors import KeelError, to_application_error


META_SUFFIX = ".meta.json"


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(
                    Path(root) / n for n in sorted(names) if not n.startswith(".") and not n.endswith(META_SUFFIX)
                )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(files))  # a path named twice is one document


@activity.defn
@heartbeating
def list_documents(inp: ListDocumentsInput) -> ListDocumentsOutput:
    """Snapshot the files into the blob store and write the manifest of (path, content hash).

    Copying makes the run independent of later edits to the files: every step of a document
    sees exactly the bytes whose hash names its workflow.
    """
    rt = runtime()
    entries = []
    for path in _expand(inp.paths):
        data = path.read_bytes()
        entry = DocumentEntry(
            path=str(path), document_id=document_id(inp.tenant, str(path)), content_hash=rt.blobs.put(data), size=len(data)
        )
        tags, date, entry.metadata_error = document_metadata(path, inp.tags, inp.date)
        entry.tags, entry.date = tags, date
        entry.version = metadata_version(entry.content_hash, tags, date)
        entries.append(asdict(entry))
    return ListDocumentsOutput(manifest_key=rt.blobs.put_json(entries), count=len(entries))


def document_metadata(path: Path, tags: list[str], date: str | None) -> tuple[list[str], str | None, str | None]:
    """(tags, date, error) of one document: the run's metadata plus its ``.meta.json`` sidecar
    (``{"tags": [...], "date": "YYYY-MM-DD"}``: tags are added, the date replaces the run's)."""
    from retrieval.store import date_ts

    tags = sorted(set(tags))
    sidecar = path.with_name(path.name + META_SUFFIX)
    try:
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not set(meta) <= {"tags", "date"}:
                raise ValueError('expected an object with only "tags" and "date"')
            extra = meta.get("tags", [])
            if not isinstance(extra, list) or not all(isinstance(t, str) and t for t in extra):
                raise ValueError('"tags" must be a list of non-empty strings')
            tags = sorted(set(tags) | set(extra))
            date = meta.get("date", date)
        if date is not None:
            date_ts(date)  # raises InvalidFilter on a malformed date
            date = str(date)[:10]
    except (ValueError, KeelError) as e:
        return tags, None, f"{sidecar.name}: {e}"
    return tags, date, None


def metadata_version(content_hash: str, tags: list[str], date: str | None) -> str:
    """The indexed version's name: new metadata on the same bytes is a new version."""
    if not tags and not date:
        return content_hash
    canonical = json.dumps({"content": content_hash, "tags": tags, "date": date}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@activity.defn
def read_manifest_page(inp: ManifestPageInput) -> ManifestPage:
    entries = runtime().blobs.get_json(inp.manifest_key)[inp.offset : inp.offset + inp.limit]
    return ManifestPage(entries=[DocumentEntry(**e) for e in entries])


@activity.defn
@heartbeating
def partition_document(inp: PartitionInput) -> PartitionOutput:
    from ingestion.partition import partition_document as partition

    rt = runtime()
    try:
        elements = partition(rt.blobs.get(inp.content_hash), Path(inp.path).name, max_bytes=rt.settings.max_document_bytes)
    except KeelError as e:
        raise to_application_error(e) from None
    return PartitionOutput(
        elements_key=rt.blobs.put_json(elements),
        elements=len(elements),
        characters=sum(len(e["text"]) for e in elements),
    )


@activity.defn
@heartbeating
def scrub_document(inp: ScrubDocumentInput) -> ScrubDocumentOutput:
    rt = runtime()
    elements = rt.blobs.get_json(inp.elements_key)
    if not rt.settings.pii_enabled:
        return ScrubDocumentOutput(elements_key=inp.elements_key, pii_counts={})
    scrubbed, counts = rt.scrubber.scrub_many([e["text"] for e in elements])
    for element, text in zip(elements, scrubbed):
        element["text"] = text
    return ScrubDocumentOutput(elements_key=rt.blobs.put_json(elements), pii_counts=counts)


@activity.defn
@heartbeating
def chunk_document(inp: ChunkInput) -> ChunkOutput:
    from ingestion.chunking import chunk_elements

    rt = runtime()
    s = rt.settings
    chunks = chunk_elements(
        rt.blobs.get_json(inp.elements_key), max_tokens=s.chunk_max_tokens, overlap_tokens=s.chunk_overlap_tokens
    )
    return ChunkOutput(chunks_key=rt.blobs.put_json(chunks), chunks=len(chunks))


@activity.defn
@heartbeating
def embed_chunks(inp: EmbedInput) -> EmbedOutput:
    rt = runtime()
    texts = [c["text"] for c in rt.blobs.get_json(inp.chunks_key)]
    vectors = rt.embedder.embed(texts)
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    return EmbedOutput(vectors_key=rt.blobs.put(buf.getvalue()), dimensions=int(vectors.shape[1]))


def document_id(tenant: str, path: str) -> str:
    """Stable id of a document: the same file path in the same tenant is the same document."""
    return hashlib.sha256(f"{tenant}\x1f{path}".encode()).hexdigest()[:32]


INGEST_ACTIVITIES = [list_documents, read_manifest_page, partition_document, scrub_document, chunk_document, embed_chunks]
