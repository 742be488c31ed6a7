"""The chunk index on Qdrant Edge (``qdrant-edge-py``): Qdrant's engine in this process.

Same public contract as :class:`retrieval.store.ChunkIndex` (``replace_document``,
``delete_document``, ``search``, ``stats``, ``close``), built for ~1M chunks with ingestion
running alongside queries.

Layout (LSM-like tiers, one directory per Edge shard under ``path/collection``)::

    manifest.json        {"active": name, "sealed": [names...], "pending": [names...], "next": n}
    shards/<name>/       one EdgeShard each

* **active** shard: small, appendable, plain (no HNSW) -- every upsert goes here, so a write is
  searchable as soon as ``update`` returns (no optimizer ever runs on it in this process).
* **sealed** shards: former active shards, read-mostly (they only receive deletes). Maintenance
  (:meth:`EdgeChunkIndex.compact`) turns them into HNSW-indexed shards.
* Every point id lives in exactly one shard: a (re)upsert of a document writes the active shard
  and removes every copy of that document from the sealed shards.

Maintenance never runs ``optimize()`` on a shard that serves queries. ``EdgeShard.optimize``
holds the GIL for its whole run (measured: a spinning Python thread and a query thread made no
progress during it), so it runs in a **child process** on a *copy* of the sealed shard(s):

1. seal (when the active shard reaches ``seal_at_points``, at once, even while a build runs):
   flush the active shard, make it sealed, open a fresh active shard, queue a build job for
   the sealed one (manifest rewritten); one builder thread runs the jobs in order;
2. under the write lock (ingestion pauses, queries do not), flush and copy the input shards'
   directories to ``<new>.building`` (a copy is a different shard: the one-process-per-shard
   lock is not violated);
3. a child process loads the copy, merges the other inputs into it (scroll -> upsert),
   runs ``optimize()``, flushes, exits. Queries keep being served by the originals meanwhile;
   deletes that hit the originals meanwhile are journaled;
4. swap: load the built shard, replay the journaled deletes, replace the inputs by it in the
   serving set and the manifest (microseconds under the lock), close and remove the inputs.

Keyword side: Keel's own BM25 sparse vectors from :mod:`retrieval.keyword` (same tokenizer and
term ids as the qdrant-client backend), stored in a sparse vector with ``Modifier.Idf`` so the
engine multiplies in IDF over the live shard. Across shards the dense lists are merged by cosine
(globally comparable) and the keyword lists by BM25 score (IDF per shard: the big sealed shards'
IDF is close to the global one, the active shard's is an estimate on a smaller sample), then fused
with reciprocal rank fusion in Python with the engine's formula ``sum 1/(k + rank0)``.

With ``keys`` (encryption on) payloads are sealed per tenant before they reach a shard (WAL and
segments alike) and opened after retrieval; filter values and term ids are keyed hashes
(:mod:`keel.retrieval.sealed`). Builds copy payloads as they are, so the child needs no key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from keel.retrieval.keyword import bm25_query_vector
from keel.retrieval.sealed import PointCodec, open_payload, point_codec
from keel.retrieval.store import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD,
    KEYWORD_FIELDS,
    RRF_K,
    Filters,
    SearchHit,
    _require_tenant,
    chunk_records,
)
from keel.types import reader_names

MERGE_ALL = ["*"]  # a build job: every sealed shard into one
_UPSERT_BATCH = 64  # one update() call holds the GIL: keep it short so queries interleave


def _qe():
    import qdrant_edge

    return qdrant_edge


def shard_config(dimensions: int, *, hnsw_m: int = 16, payload_m: int = 16):
    """Everything memory-mapped ``Cold``: loading a shard does not read its vectors, sparse
    index, graph or payload into RAM (the page cache warms up with use). ``EdgeShard.load``
    holds the GIL, so load time is a stall for every thread of this process: measured for a
    50k-point shard, 1.2 s with the default placements, 0.7-0.9 s with ``Cold``."""
    qe = _qe()
    cold = qe.Memory.Cold
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimensions, distance=qe.Distance.Cosine, memory=cold)},
        sparse_vectors={KEYWORD: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf, memory=cold)},
        hnsw_config=qe.HnswIndexConfig(
            m=hnsw_m, ef_construct=100, full_scan_threshold=10_000, payload_m=payload_m, memory=cold
        ),
        payload_memory=cold,
        # One search thread per shard: a query or count fans out over all shards anyway, and
        # the default (one per CPU, per shard) put ~200 threads on 2 cores at 25 shards.
        max_search_threads=1,
    )


def _create_indexes(shard) -> None:
    qe = _qe()
    shard.update(qe.UpdateOperation.create_field_index("tenant", qe.KeywordIndexParams(is_tenant=True)))
    for field in KEYWORD_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    for field in INTEGER_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Integer))


def _match(key: str, value):
    qe = _qe()
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _conditions(conditions: list[tuple]) -> list:
    """Edge conditions for backend-neutral ones (``PointCodec.conditions``)."""
    qe = _qe()
    out = []
    for kind, key, *args in conditions:
        if kind == "match":
            out.append(_match(key, args[0]))
        elif kind == "any":
            out.append(qe.FieldCondition(key=key, match=qe.MatchAny(args[0])))
        elif kind == "readable":  # no readers (or none stored: older points), or one of these
            public = qe.IsEmptyCondition(key)
            out.append(qe.Filter(should=[public, qe.FieldCondition(key=key, match=qe.MatchAny(args[0]))]) if args[0] else public)
        else:
            out.append(qe.FieldCondition(key=key, range=qe.RangeFloat(gte=args[0], lte=args[1])))
    return out


class _RWLock:
    """Many queries or one exclusive swap."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class EdgeChunkIndex:
    """Hybrid chunk index on Qdrant Edge shards (one process only; see module docstring).

    :param path: folder holding the index (created if missing).
    :param seal_at_points: when the active shard reaches this many points, a background
        :meth:`compact` seals it and builds its HNSW-indexed replacement out of process. This
        also bounds every shard's size, and with it the swap's stall: loading a built shard holds
        the GIL for ~15-20 us per point (50k points: under a second). Shards are never merged
        past it automatically, so 1M chunks are ~20 sealed shards, each query fans out to all.
    :param keys: a ``keel._codec.Keys`` holding the key store: document text is stored sealed
        per tenant. ``None`` (encryption off): stored in clear.

    ``search(..., filters=Filters(...))`` narrows the mandatory tenant filter by source,
    document, tags (any of) and a date range.
    """

    def __init__(
        self,
        *,
        path: Path | str,
        collection: str = "keel_chunks",
        dimensions: int = 384,
        seal_at_points: int = 50_000,
        keys=None,
    ) -> None:
        self.keys = keys
        self.root = Path(path) / collection
        self.shards_dir = self.root / "shards"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self.dimensions = dimensions
        self.seal_at_points = seal_at_points
        self._write_lock = threading.RLock()  # writers + seal/swap bookkeeping
        # Writers pass this gate before taking the write lock; maintenance holds it while it
        # waits, so a steady stream of writes cannot starve a swap (locks are not fair).
        self._gate = threading.Lock()
        self._building: set[str] = set()  # sealed shards being rebuilt by a compaction
        self._serve = _RWLock()  # queries (shared) vs swapping the shard list (exclusive)
        # During a build, what changed in its input shards, replayed on the built copy in order:
        # (tenant, stored document id or None: the whole tenant, None: deleted | payload set)
        self._journal: list[tuple[str, str | None, dict | None]] | None = None
        # Build jobs (lists of sealed shard names; MERGE_ALL = every sealed shard), run one at a
        # time by the builder thread. Persisted in the manifest ("pending") across restarts.
        self._jobs: list[list[str]] = []
        self._jobs_queued = self._jobs_done = 0  # compact(wait=True) waits for the jobs queued so far
        self._builder: threading.Thread | None = None
        self._idle = threading.Condition(self._write_lock)
        self._stopping = False
        self.last_compaction: dict[str, Any] = {}
        self.compaction_log: list[dict[str, Any]] = []  # this process's compactions, oldest first
        self._closed = False

        manifest = self._read_manifest()
        names = [manifest["active"], *manifest["sealed"]]
        self._next = manifest["next"]
        for leftover in self.shards_dir.iterdir():  # crashed builds, already-swapped inputs
            if leftover.name not in names:
                shutil.rmtree(leftover, ignore_errors=True)
        self.shards: dict[str, Any] = {}
        for name in names:
            self.shards[name] = self._open(name)
        self.active = manifest["active"]
        self.sealed = list(manifest["sealed"])
        for name in manifest.get("pending", []):  # built after the next write or compact()
            if name in self.sealed:
                self._queue([name])

    # --- shard files -----------------------------------------------------------------------

    def _read_manifest(self) -> dict:
        file = self.root / "manifest.json"
        if file.exists():
            manifest = json.loads(file.read_text())
            if manifest.get("dimensions", self.dimensions) != self.dimensions:
                raise ValueError(f"index at {self.root} has {manifest['dimensions']}-d vectors, not {self.dimensions}")
            return manifest
        manifest = {"active": "s000000", "sealed": [], "next": 1, "dimensions": self.dimensions}
        self._write_manifest_dict(manifest)
        return manifest

    def _write_manifest_dict(self, manifest: dict) -> None:
        tmp = self.root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "manifest.json")

    def _write_manifest(self) -> None:
        pending = [n for job in self._jobs if job != MERGE_ALL for n in job]
        self._write_manifest_dict(
            {"active": self.active, "sealed": self.sealed, "pending": pending, "next": self._next,
             "dimensions": self.dimensions}
        )

    def _new_name(self) -> str:
        name = f"s{self._next:06d}"
        self._next += 1
        return name

    def _open(self, name: str):
        qe = _qe()
        directory = self.shards_dir / name
        if (directory / "edge_config.json").exists():
            return qe.EdgeShard.load(str(directory))
        shutil.rmtree(directory, ignore_errors=True)
        shard = qe.EdgeShard.create(str(directory), shard_config(self.dimensions))
        _create_indexes(shard)
        return shard

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._stopping = True  # the builder finishes its current job; the rest stay pending
            builder = self._builder
        if builder is not None:
            builder.join()
        self._serve.acquire_write()
        try:
            for shard in self.shards.values():
                shard.flush()
                shard.close()
            self.shards.clear()
            self._closed = True
        finally:
            self._serve.release_write()

    def flush(self) -> None:
        with self._write_lock:
            for shard in list(self.shards.values()):
                shard.flush()

    # --- writes ----------------------------------------------------------------------------

    def replace_document(
        self,
        *,
        tenant: str,
        document_id: str,
        source: str,
        content_hash: str,
        chunks: list[dict[str, str]],
        vectors: np.ndarray,
        tags: list[str] | tuple[str, ...] = (),
        date: str | None = None,
        readers: list[str] | tuple[str, ...] = (),
    ) -> tuple[int, int]:
        """Upsert this version's chunks into the active shard, then delete every other version.

        Returns (points upserted, stale points removed). Idempotent: a retry rewrites the same ids.
        """
        qe = _qe()
        _require_tenant(tenant)
        codec = point_codec(self.keys, tenant)
        records = chunk_records(
            tenant=tenant, document_id=document_id, source=source, content_hash=content_hash, chunks=chunks,
            vectors=vectors, tags=tags, date=date, readers=readers, codec=codec,
        )
        points = [
            qe.Point(r.id, {DENSE: r.vector, KEYWORD: qe.SparseVector(r.keyword.indices, r.keyword.values)}, r.payload)
            for r in records
        ]
        stored_id = codec.lookup("document_id", document_id)
        document = [_match("tenant", tenant), _match("document_id", stored_id)]
        stale = qe.Filter(must=document, must_not=[_match("content_hash", codec.lookup("content_hash", content_hash))])
        whole = qe.Filter(must=document)
        with self._writer():
            active = self.shards[self.active]
            for start in range(0, len(points), _UPSERT_BATCH):
                active.update(qe.UpdateOperation.upsert_points(points[start : start + _UPSERT_BATCH]))
            removed = active.count(qe.CountRequest(exact=True, filter=stale))
            active.update(qe.UpdateOperation.delete_points_by_filter(stale))
            removed += self._delete_from_sealed(whole, tenant, stored_id, stale=stale)
            if self.shards[self.active].info().points_count >= self.seal_at_points:
                self._seal()
            self._start_builder()
        return len(points), removed

    def set_readers(self, tenant: str, document_id: str, readers: list[str] | tuple[str, ...]) -> int:
        """Replace who may read a document in every shard holding it (nothing is re-embedded);
        how many points it has. A build running meanwhile replays it on its copy before the swap."""
        qe = _qe()
        _require_tenant(tenant)
        codec = point_codec(self.keys, tenant)
        stored_id = codec.lookup("document_id", document_id)
        payload = {"readers": codec.store_readers(reader_names(readers))}
        document = qe.Filter(must=[_match("tenant", tenant), _match("document_id", stored_id)])
        found = 0
        with self._writer():
            for name in [self.active, *self.sealed]:
                shard = self.shards[name]
                count = shard.count(qe.CountRequest(exact=True, filter=document))
                if count:
                    found += count
                    shard.update(qe.UpdateOperation.set_payload_by_filter(document, payload))
                    if self._journal is not None and name in self._building:
                        self._journal.append((tenant, stored_id, payload))
        return found

    def _delete_from_sealed(self, selector, tenant: str, document_id: str | None, stale=None) -> int:
        """Remove every copy of the document (``document_id``: its stored form; ``None``: every
        document of the tenant) from the sealed shards. Returns how many points were removed
        (only those matching ``stale``, when given: other versions)."""
        qe = _qe()
        # The current version lives in the active shard; sealed shards must not keep any copy.
        # One count per sealed shard per write: the common case (a new document) stops there.
        removed = 0
        for name in self.sealed:
            shard = self.shards[name]
            found = shard.count(qe.CountRequest(exact=True, filter=selector))
            if found:
                removed += shard.count(qe.CountRequest(exact=True, filter=stale)) if stale is not None else found
                shard.update(qe.UpdateOperation.delete_points_by_filter(selector))
                if self._journal is not None and name in self._building:  # the copy still has it
                    self._journal.append((tenant, document_id, None))
        return removed

    def _writer(self):
        with self._gate:
            pass
        return self._write_lock

    @contextlib.contextmanager
    def _maintenance(self):
        with self._gate:
            self._write_lock.acquire()
        try:
            yield
        finally:
            self._write_lock.release()

    def delete_document(self, tenant: str, document_id: str) -> None:
        qe = _qe()
        _require_tenant(tenant)
        stored_id = point_codec(self.keys, tenant).lookup("document_id", document_id)
        whole = qe.Filter(must=[_match("tenant", tenant), _match("document_id", stored_id)])
        with self._writer():
            self.shards[self.active].update(qe.UpdateOperation.delete_points_by_filter(whole))
            self._delete_from_sealed(whole, tenant, stored_id)

    def delete_tenant(self, tenant: str) -> int:
        """Delete every point of ``tenant`` (erasure) from every shard; how many there were.
        Needs no key: the tenant is stored in clear, so a forgotten tenant's points can still be
        found. A build running meanwhile replays the deletion on its copy before the swap."""
        qe = _qe()
        _require_tenant(tenant)
        everything = qe.Filter(must=[_match("tenant", tenant)])
        with self._writer():
            active = self.shards[self.active]
            found = active.count(qe.CountRequest(exact=True, filter=everything))
            active.update(qe.UpdateOperation.delete_points_by_filter(everything))
            return found + self._delete_from_sealed(everything, tenant, None)

    # --- reads -----------------------------------------------------------------------------

    def search(
        self,
        tenant: str,
        query: str,
        query_vector: np.ndarray,
        *,
        top_k: int = 5,
        prefetch_k: int = 40,
        filters: Filters | None = None,
        principals: list[str] | tuple[str, ...] = (),
    ) -> list[SearchHit]:
        """Dense and BM25 candidates from every shard, fused with RRF, inside one tenant, among
        the chunks ``principals`` may read (as :meth:`keel.retrieval.store.ChunkIndex.search`)."""
        _require_tenant(tenant)
        return self._search(
            tenant, query, query_vector, top_k=top_k, prefetch_k=prefetch_k, filters=filters, principals=list(principals)
        )

    def _search(
        self,
        tenant: str | None,
        query: str,
        query_vector: np.ndarray | None,
        *,
        top_k: int,
        prefetch_k: int,
        filters: Filters | None = None,
        keyword: bool = True,
        principals: list[str] | None = None,
    ) -> list[SearchHit]:
        """``tenant=None`` / ``query_vector=None`` / ``keyword=False`` / ``principals=None`` (no
        permission condition) exist for benchmarks only."""
        qe = _qe()
        # tenant=None (benchmarks): no tenant key to hash terms or filter values with; in clear.
        codec = point_codec(self.keys, tenant) if tenant else PointCodec("")
        conditions = ([_match("tenant", tenant)] if tenant else []) + _conditions(codec.conditions(filters, principals))
        flt = qe.Filter(must=conditions) if conditions else None
        requests = []
        if query_vector is not None:
            vec = np.asarray(query_vector, dtype=np.float32)
            requests.append(qe.QueryRequest(limit=prefetch_k, query=qe.Query.Nearest(vec.tolist(), using=DENSE), filter=flt))
        terms = bm25_query_vector(query, term_ids=codec.term_id) if keyword else None
        if terms is not None and terms.indices:
            sparse = qe.SparseVector(terms.indices, terms.values)
            requests.append(qe.QueryRequest(limit=prefetch_k, query=qe.Query.Nearest(sparse, using=KEYWORD), filter=flt))
        if not requests:
            return []
        batch = qe.QueryBatchRequest(requests)

        self._serve.acquire_read()
        try:
            lists: list[list[tuple[float, Any, str]]] = [[] for _ in requests]
            for name, shard in list(self.shards.items()):
                for i, result in enumerate(shard.query_batch(batch)):
                    lists[i].extend((p.score, p.id, name) for p in result)
            fused: dict[Any, float] = {}
            home: dict[Any, str] = {}
            for ranked in lists:
                ranked.sort(key=lambda r: -r[0])
                seen = set()
                rank = 0
                for score, pid, name in ranked:
                    if pid in seen:  # a point briefly in two shards while being moved
                        continue
                    seen.add(pid)
                    fused[pid] = fused.get(pid, 0.0) + 1.0 / (RRF_K + rank)
                    home.setdefault(pid, name)
                    rank += 1
                    if rank >= prefetch_k:
                        break
            best = sorted(fused, key=lambda pid: -fused[pid])[:top_k]
            by_shard: dict[str, list] = {}
            for pid in best:
                by_shard.setdefault(home[pid], []).append(pid)
            records = {}
            for name, ids in by_shard.items():
                for record in self.shards[name].retrieve(ids, with_payload=True, with_vector=[DENSE]):
                    records[record.id] = record
        finally:
            self._serve.release_read()

        hits = []
        q = np.asarray(query_vector, dtype=np.float32) if query_vector is not None else None
        for pid in best:
            record = records.get(pid)
            if record is None:  # deleted between the query and the fetch
                continue
            p = open_payload(self.keys, record.payload)
            cosine = 0.0
            if q is not None:
                dense = np.asarray(record.vector[DENSE], dtype=np.float32)
                cosine = float(dense @ q / (np.linalg.norm(dense) * np.linalg.norm(q) or 1.0))
            hits.append(SearchHit(str(pid), p["document_id"], p["source"], p["text"], cosine, fused[pid]))
        return hits

    def indexed_versions(self, tenant: str, document_ids: list[str]) -> dict[str, str]:
        """The content hash of the indexed version of each of ``document_ids`` that is indexed."""
        qe = _qe()
        _require_tenant(tenant)
        if not document_ids:
            return {}
        codec = point_codec(self.keys, tenant)
        first_chunks = qe.Filter(
            must=[
                _match("tenant", tenant),
                qe.FieldCondition(key="document_id", match=qe.MatchAny([codec.lookup("document_id", d) for d in document_ids])),
                _match("chunk_index", 0),
            ]
        )
        payloads = []
        self._serve.acquire_read()
        try:
            for shard in self.shards.values():
                records, _ = shard.scroll(
                    qe.ScrollRequest(limit=len(document_ids), filter=first_chunks, with_payload=True)
                )
                payloads += [r.payload for r in records]
        finally:
            self._serve.release_read()
        opened = [open_payload(self.keys, p) for p in payloads]  # after the lock: a swap never waits on decryption
        return {p["document_id"]: p["content_hash"] for p in opened}

    def stats(self, tenant: str) -> dict[str, int]:
        qe = _qe()
        _require_tenant(tenant)
        in_tenant = _match("tenant", tenant)
        chunks = documents = 0
        self._serve.acquire_read()
        try:
            for shard in self.shards.values():
                chunks += shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=[in_tenant])))
                first = qe.Filter(must=[in_tenant, _match("chunk_index", 0)])
                documents += shard.count(qe.CountRequest(exact=True, filter=first))
        finally:
            self._serve.release_read()
        return {"documents": documents, "chunks": chunks}

    def info(self) -> dict[str, Any]:
        out = {}
        for name, shard in self.shards.items():
            i = shard.info()
            out[name] = {
                "role": "active" if name == self.active else "sealed",
                "points": i.points_count,
                "segments": i.segments_count,
                "indexed_vectors": i.indexed_vectors_count,
            }
        return out

    # --- maintenance -----------------------------------------------------------------------

    def compact(self, *, merge: bool = False, wait: bool = True) -> dict[str, Any] | None:
        """Seal the active shard and queue its HNSW build (out of process, see module docstring).

        ``merge``: afterwards also fold every sealed shard into one (a full HNSW rebuild, and a
        swap stall proportional to its size: for explicit offline use only). ``wait``: return
        when every queued build is done, with the last one's report.
        Queries are served from the old shards until each swap.
        """
        with self._maintenance():
            self._seal()
            if merge and len(self.sealed) > 1:
                self._queue(MERGE_ALL)
            self._start_builder()
            if not wait:
                return None
            mine = self._jobs_queued
            while self._jobs_done < mine and (self._builder is not None or self._jobs):
                self._idle.wait()  # releases the write lock while waiting
            return self.last_compaction

    def _queue(self, job: list[str]) -> None:
        self._jobs.append(job)
        self._jobs_queued += 1

    def _seal(self) -> None:
        """Under the write lock: the active shard becomes sealed with a build queued for it."""
        if self.shards[self.active].info().points_count == 0:
            return
        self.shards[self.active].flush()
        fresh = self._new_name()
        self.shards[fresh] = self._open(fresh)
        self.sealed.append(self.active)
        self._queue([self.active])
        self.active = fresh
        self._write_manifest()

    def _start_builder(self) -> None:
        if self._jobs and self._builder is None and not self._stopping:
            self._builder = threading.Thread(target=self._run_builds, daemon=True)
            self._builder.start()

    def _run_builds(self) -> None:
        while True:
            with self._maintenance():
                if not self._jobs or self._stopping:
                    self._builder = None
                    self._idle.notify_all()
                    return
                job = self._jobs[0]
                inputs = list(self.sealed) if job == MERGE_ALL else [n for n in job if n in self.sealed]
                self._journal = []
                self._building = set(inputs)
            if inputs:
                self._build(inputs)
            with self._write_lock:
                self._jobs.pop(0)  # done or failed (a failed shard stays plain; still served)
                self._jobs_done += 1
                self._write_manifest()
                self._idle.notify_all()

    def _build(self, inputs: list[str]) -> None:
        timing: dict[str, Any] = {"inputs": inputs}
        t0 = time.perf_counter()
        target = None
        try:
            with self._maintenance():  # writes pause while the inputs are copied; queries don't
                target = self._new_name()
                self._write_manifest()  # persist "next" so a crash never reuses the name
                sizes = {n: self.shards[n].info().points_count for n in inputs}
                base = max(inputs, key=sizes.get)
                copies = []
                for name in inputs:
                    self.shards[name].flush()
                    dst = self.shards_dir / (target if name == base else f"{target}.merge-{name}")
                    _copy_shard(self.shards_dir / name, dst)
                    if name != base:
                        copies.append(str(dst))
            timing["copy_s"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            job = json.dumps({"target": str(self.shards_dir / target), "merge": copies})
            proc = subprocess.run(
                [sys.executable, "-c", "from keel.retrieval.edge import _build_main; _build_main()", job],
                capture_output=True, text=True,
            )
            if proc.returncode:
                raise RuntimeError(f"shard build failed: {proc.stderr[-2000:]}")
            timing["child"] = json.loads(proc.stdout.strip().splitlines()[-1])
            timing["build_s"] = round(time.perf_counter() - t1, 3)

            t2 = time.perf_counter()
            built = _qe().EdgeShard.load(str(self.shards_dir / target))  # holds the GIL: the swap's stall
            timing["load_s"] = round(time.perf_counter() - t2, 3)
            qe = _qe()
            with self._maintenance():
                for tenant, document_id, payload in self._journal or []:
                    document = [_match("document_id", document_id)] if document_id is not None else []
                    flt = qe.Filter(must=[_match("tenant", tenant), *document])
                    if payload is None:
                        built.update(qe.UpdateOperation.delete_points_by_filter(flt))
                    else:
                        built.update(qe.UpdateOperation.set_payload_by_filter(flt, payload))
                timing["journal_replayed"] = len(self._journal or [])
                self._journal = None
                self._building = set()
                t3 = time.perf_counter()
                self._serve.acquire_write()
                try:
                    old = {n: self.shards.pop(n) for n in inputs}
                    position = self.sealed.index(inputs[0])
                    self.sealed = [n for n in self.sealed if n not in inputs]
                    self.sealed.insert(min(position, len(self.sealed)), target)
                    self.shards[target] = built
                    self._write_manifest()
                finally:
                    self._serve.release_write()
                timing["swap_s"] = round(time.perf_counter() - t3, 4)
            for name, shard in old.items():
                shard.close()
                shutil.rmtree(self.shards_dir / name, ignore_errors=True)
            timing["points"] = built.info().points_count
        except Exception as exc:  # the originals keep serving; the next compaction retries
            timing["error"] = repr(exc)
            with self._write_lock:
                self._journal = None
                self._building = set()
            if target:
                for leftover in self.shards_dir.glob(f"{target}*"):
                    shutil.rmtree(leftover, ignore_errors=True)
        finally:
            timing["total_s"] = round(time.perf_counter() - t0, 3)
            self.last_compaction = timing
            self.compaction_log.append(timing)


def _copy_shard(src: Path, dst: Path) -> None:
    """Copy a flushed shard directory, keeping preallocated mmap/WAL files sparse."""
    try:
        subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def _build_main() -> None:
    """Child process: merge copies into the target copy, optimize it, flush, exit."""
    qe = _qe()
    job = json.loads(sys.argv[-1])
    os.nice(10)  # the build yields the CPU to queries and ingestion in the serving process
    t0 = time.perf_counter()
    shard = qe.EdgeShard.load(job["target"])
    merged = 0
    for other_dir in job["merge"]:
        other = qe.EdgeShard.load(other_dir)
        offset = None
        while True:
            records, offset = other.scroll(qe.ScrollRequest(offset=offset, limit=512, with_payload=True, with_vector=True))
            if records:
                shard.update(qe.UpdateOperation.upsert_points([qe.Point(r.id, r.vector, r.payload) for r in records]))
                merged += len(records)
            if offset is None:
                break
        other.close()
        shutil.rmtree(other_dir, ignore_errors=True)
    t1 = time.perf_counter()
    optimized = shard.optimize()
    t2 = time.perf_counter()
    shard.flush()
    info = shard.info()
    shard.close()
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak across exec into ru_maxrss.
    peak_mb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_mb = round(int(line.split()[1]) / 1024, 1)
    print(json.dumps({
        "merged_points": merged, "merge_s": round(t1 - t0, 3), "optimize_s": round(t2 - t1, 3),
        "optimized": optimized, "segments": info.segments_count, "points": info.points_count,
        "indexed_vectors": info.indexed_vectors_count, "peak_rss_mb": peak_mb,
    }))
