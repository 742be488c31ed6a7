"""Ingestion activities: thin adapters from Temporal to ``keel.ingestion``.

Each reads its input from the blob store by key and writes its output there, so only keys and
counts enter workflow history. All are idempotent: blob keys are content hashes. Call them
through :mod:`keel.steps`, which picks their options and works outside a workflow too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from temporalio import activity

from keel.activities._runtime import heartbeating, runtime
from keel.errors import KeelError, PathNotAllowed, to_application_error
from keel.types import ChunkSpec, Chunks, ChunkText, Elements, EmbeddingSpec, PIIPolicy, ScrubbedText, Vectors

META_SUFFIX = ".meta.json"


# --- listing a corpus ------------------------------------------------------------------------


@dataclass
class ListDocumentsInput:
    tenant: str
    paths: list[str]
    # Metadata for every listed document; a ``<file>.meta.json`` beside a file adds to it.
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    readers: list[str] = field(default_factory=list)  # who may read them (empty: everyone in the tenant)


@dataclass
class DocumentEntry:
    path: str
    document_id: str  # stable per (tenant, path): a changed file replaces its old chunks
    content_hash: str  # also the blob key of the file's bytes
    size: int
    tags: list[str] = field(default_factory=list)
    date: str | None = None  # ISO date
    readers: list[str] = field(default_factory=list)  # principals who may read it; empty: everyone
    # Names what gets indexed: the content hash, or a hash of it and the metadata when there is any.
    version: str = ""
    metadata_error: str | None = None  # an unreadable .meta.json: this document fails, typed
    path_error: str | None = None  # a path ingest may not read (PathNotAllowed): nothing was read

    @property
    def indexed_version(self) -> str:
        return self.version or self.content_hash


@dataclass
class Manifest:
    key: str  # blob: list[DocumentEntry] as dicts
    count: int


@dataclass
class ManifestPageInput:
    manifest: Manifest
    offset: int
    limit: int


@dataclass
class ManifestPage:
    entries: list[DocumentEntry]


def check_path(path: Path, roots: list[Path]) -> Path:
    """``path`` resolved (symlinks followed), if it lies below one of ``roots``; else
    ``PathNotAllowed``. A path with ``..`` is refused outright."""
    if ".." in path.parts:
        raise PathNotAllowed(f"{path}: '..' is not allowed in an ingest path")
    real = path.expanduser().resolve()
    if not any(real == root or root in real.parents for root in roots):
        raise PathNotAllowed(f"{path}: outside the allowed roots ({', '.join(map(str, roots))})")
    return real


def _expand(paths: list[str], roots: list[Path]) -> list[tuple[Path, str | None]]:
    """Every file below ``paths`` with why it may not be read (None: it may). ``roots``: the
    allowed roots; empty: each named path is its own root (a symlink in it cannot reach out)."""
    files: list[tuple[Path, str | None]] = []
    for raw in paths:
        named = Path(raw).expanduser()
        try:
            path = check_path(named, roots or [named.resolve()])
        except PathNotAllowed as e:
            files.append((named.absolute(), str(e)))
            continue
        allowed = roots or [path]
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    if n.startswith(".") or n.endswith(META_SUFFIX):
                        continue
                    try:
                        files.append((check_path(Path(root) / n, allowed), None))
                    except PathNotAllowed as e:
                        files.append((Path(root) / n, str(e)))
        elif path.is_file():
            files.append((path, None))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return list(dict.fromkeys(files))  # a path named twice is one document


@activity.defn(name="keel.list_documents")
@heartbeating
def list_documents(inp: ListDocumentsInput) -> Manifest:
    """Snapshot the files into the blob store and write the manifest of (path, content hash).

    Copying makes the run independent of later edits to the files: every step of a document
    sees exactly the bytes whose hash names its workflow.
    """
    rt = runtime()
    roots = [Path(r).expanduser().resolve() for r in rt.settings.ingest_roots]
    entries = []
    for path, refused in _expand(inp.paths, roots):
        if refused is not None:  # nothing of it is read: the document fails alone, typed
            entries.append(asdict(DocumentEntry(str(path), document_id(inp.tenant, str(path)), "", 0, path_error=refused)))
            continue
        data = path.read_bytes()
        entry = DocumentEntry(
            path=str(path), document_id=document_id(inp.tenant, str(path)), content_hash=rt.blobs.put(data), size=len(data)
        )
        tags, date, entry.metadata_error, readers = document_metadata(path, inp.tags, inp.date, inp.readers)
        entry.tags, entry.date, entry.readers = tags, date, readers
        entry.version = metadata_version(entry.content_hash, tags, date, readers)
        entries.append(asdict(entry))
    return Manifest(key=rt.blobs.put_json(entries), count=len(entries))


def document_metadata(
    path: Path, tags: list[str], date: str | None, readers: list[str] | None = None
) -> tuple[list[str], str | None, str | None, list[str]]:
    """(tags, date, error, readers) of one document: the run's metadata plus its ``.meta.json``
    sidecar (``{"tags": [...], "date": "YYYY-MM-DD", "readers": ["user:NAME", "group:NAME"]}``:
    tags are added, the date replaces the run's, readers replace the run's)."""
    from keel.types import date_ts, reader_names

    tags = sorted(set(tags))
    sidecar = path.with_name(path.name + META_SUFFIX)
    try:
        readers = reader_names(readers)
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or not set(meta) <= {"tags", "date", "readers"}:
                raise ValueError('expected an object with only "tags", "date" and "readers"')
            extra = meta.get("tags", [])
            if not isinstance(extra, list) or not all(isinstance(t, str) and t for t in extra):
                raise ValueError('"tags" must be a list of non-empty strings')
            if not isinstance(meta.get("readers", []), list):
                raise ValueError('"readers" must be a list of "user:NAME" or "group:NAME"')
            tags = sorted(set(tags) | set(extra))
            date = meta.get("date", date)
            if "readers" in meta:
                readers = reader_names(meta["readers"])
        if date is not None:
            date_ts(date)  # raises InvalidFilter on a malformed date
            date = str(date)[:10]
    except (ValueError, KeelError) as e:
        return tags, None, f"{sidecar.name}: {e}", []
    return tags, date, None, readers


def metadata_version(content_hash: str, tags: list[str], date: str | None, readers: list[str] | None = None) -> str:
    """The indexed version's name: new metadata on the same bytes is a new version (readers
    included: an ingest that lists other readers re-indexes; ``set_readers`` changes them in
    place)."""
    if not tags and not date and not readers:
        return content_hash
    fields: dict = {"content": content_hash, "tags": tags, "date": date}
    if readers:  # absent otherwise: versions named before readers existed keep their names
        fields["readers"] = readers
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def document_id(tenant: str, path: str) -> str:
    """Stable id of a document: the same file path in the same tenant is the same document."""
    return hashlib.sha256(f"{tenant}\x1f{path}".encode()).hexdigest()[:32]


@activity.defn(name="keel.read_manifest_page")
def read_manifest_page(inp: ManifestPageInput) -> ManifestPage:
    entries = runtime().blobs.get_json(inp.manifest.key)[inp.offset : inp.offset + inp.limit]
    return ManifestPage(entries=[DocumentEntry(**e) for e in entries])


# --- one document ------------------------------------------------------------------------------


@dataclass
class PartitionInput:
    filename: str  # its suffix picks the parser
    blob_key: str | None = None  # the document's bytes in the blob store, or:
    data_b64: str | None = None  # its bytes inline (small documents only: they enter history)


@activity.defn(name="keel.partition")
@heartbeating
def partition_document(inp: PartitionInput) -> Elements:
    from keel.ingestion.partition import partition_document as partition

    rt = runtime()
    data = base64.b64decode(inp.data_b64) if inp.data_b64 is not None else rt.blobs.get(inp.blob_key or "")
    try:
        elements = partition(data, Path(inp.filename).name, max_bytes=rt.settings.max_document_bytes)
    except KeelError as e:
        raise to_application_error(e) from None
    return Elements(key=rt.blobs.put_json(elements), count=len(elements), characters=sum(len(e["text"]) for e in elements))


@dataclass
class ScrubElementsInput:
    elements: Elements
    policy: PIIPolicy | None = None  # None: the worker's default (KeelSettings)


@activity.defn(name="keel.scrub_elements")
@heartbeating
def scrub_elements(inp: ScrubElementsInput) -> Elements:
    rt = runtime()
    policy = inp.policy or rt.settings.pii_policy
    if not policy.enabled:
        return Elements(inp.elements.key, inp.elements.count, inp.elements.characters, {}, policy)
    elements = rt.blobs.get_json(inp.elements.key)
    scrubbed, counts = rt.scrubber.scrub_many([e["text"] for e in elements], policy)
    for element, text in zip(elements, scrubbed):
        element["text"] = text
    return Elements(rt.blobs.put_json(elements), len(elements), sum(len(t) for t in scrubbed), counts, policy)


@dataclass
class ScrubTextInput:
    text: str
    policy: PIIPolicy | None = None


@activity.defn(name="keel.scrub_text")
def scrub_text(inp: ScrubTextInput) -> ScrubbedText:
    rt = runtime()
    policy = inp.policy or rt.settings.pii_policy
    if not policy.enabled:
        return ScrubbedText(text=inp.text)
    texts, counts = rt.scrubber.scrub_many([inp.text], policy)
    return ScrubbedText(text=texts[0], pii_counts=counts)


@dataclass
class ChunkInput:
    elements: Elements
    spec: ChunkSpec | None = None


@activity.defn(name="keel.chunk")
@heartbeating
def chunk_document(inp: ChunkInput) -> Chunks:
    from keel.ingestion.chunking import chunk_elements

    rt = runtime()
    spec = inp.spec or rt.settings.chunk_spec
    chunks = chunk_elements(rt.blobs.get_json(inp.elements.key), max_tokens=spec.max_tokens, overlap_tokens=spec.overlap_tokens)
    return Chunks(key=rt.blobs.put_json(chunks), count=len(chunks), spec=spec)


@dataclass
class ReadChunksInput:
    chunks: Chunks
    start: int = 0
    limit: int | None = None


@dataclass
class ChunkTexts:
    chunks: list[ChunkText]


@activity.defn(name="keel.read_chunks")
def read_chunks(inp: ReadChunksInput) -> ChunkTexts:
    stored = runtime().blobs.get_json(inp.chunks.key)
    end = len(stored) if inp.limit is None else inp.start + inp.limit
    return ChunkTexts(
        [ChunkText(i, c["text"], c.get("section", "")) for i, c in enumerate(stored[inp.start : end], start=inp.start)]
    )


@dataclass
class EmbedInput:
    chunks: Chunks
    spec: EmbeddingSpec | None = None


@activity.defn(name="keel.embed")
@heartbeating
def embed_chunks(inp: EmbedInput) -> Vectors:
    from keel.ingestion.chunking import searchable_text

    rt = runtime()
    spec = inp.spec or rt.settings.embedding_spec
    texts = [searchable_text(c) for c in rt.blobs.get_json(inp.chunks.key)]
    vectors = rt.embedder(spec).embed(texts)
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    return Vectors(key=rt.blobs.put(buf.getvalue()), count=len(texts), dimensions=int(vectors.shape[1]), model=spec.model)


@dataclass
class UploadInput:
    tenant: str
    filename: str
    data_b64: str  # sealed in the run's input, and nowhere else in history
    tags: list[str] = field(default_factory=list)
    date: str | None = None
    readers: list[str] = field(default_factory=list)  # who may read it (empty: everyone in the tenant)


@activity.defn(name="keel.store_upload")
def store_upload(inp: UploadInput) -> DocumentEntry:
    """Put an uploaded document into the blob store; its entry, as a listed file would have."""
    from keel.types import reader_names

    data = base64.b64decode(inp.data_b64)
    path = f"upload:{inp.filename}"
    try:
        readers = reader_names(inp.readers)
    except KeelError as e:
        raise to_application_error(e) from None
    entry = DocumentEntry(path, document_id(inp.tenant, path), runtime().blobs.put(data), len(data), list(inp.tags), inp.date)
    entry.readers = readers
    entry.version = metadata_version(entry.content_hash, entry.tags, entry.date, readers)
    return entry


@dataclass
class DiscardInput:
    keys: list[str]  # blobs of the run's tenant


@activity.defn(name="keel.discard_blobs")
def discard_blobs(inp: DiscardInput) -> int:
    return runtime().blobs.delete(inp.keys)


INGEST_ACTIVITIES = [
    discard_blobs,
    store_upload,
    list_documents,
    read_manifest_page,
    partition_document,
    scrub_elements,
    scrub_text,
    chunk_document,
    read_chunks,
    embed_chunks,
]
