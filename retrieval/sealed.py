"""What an index keeps of a tenant's documents on disk: with encryption on, no document text.

Search needs vectors, sparse vectors and exact-match filters, never the text itself, so a
point of a tenant with keys holds:

* ``sealed``: the chunk's text and section, the document's id, source path, version and date,
  sealed together (AES-256-GCM) under the tenant's ``index`` key, opened after retrieval;
* keyed hashes (HMAC under the tenant's first ``index`` key, so rotation never orphans a point)
  of the values filters, replaces and deletes match exactly: ``document_id``, ``source``,
  ``content_hash``, ``tags``, ``readers`` (principals allowed to read the document). A plain
  hash would let whoever reads the files confirm a guess
  ("is there a ``hr/jane-roe.pdf``?");
* BM25 term ids as keyed hashes too: ``crc32(word)`` is one dictionary pass away from the word.
  The ids differ per tenant, so the engine's IDF counts the tenant's own chunks only (the
  query is filtered to the tenant anyway; another tenant's corpus no longer moves its scores);
* point ids from the same key: a uuid5 of a path-derived document id is confirmable as well;
* in clear: ``tenant`` (the mandatory filter), ``chunk_index`` (document counts), ``date_ts``
  (date ranges) and the vectors.

Without keys (encryption off) a point is stored as it always was, in clear. Erasure: deleting a
tenant's points leaves sealed bytes in segment files and WALs until the engine rewrites them;
destroying the tenant's key makes them unreadable.

>>> import tempfile
>>> from pathlib import Path
>>> from keel._codec import Keys
>>> d = Path(tempfile.mkdtemp())
>>> keys = Keys(keys_dir=d / "k", master_key_file=d / "m", keyring=d / "r", auto_create=True, create_master=True)
>>> codec = point_codec(keys, "acme")
>>> stored = codec.store({"tenant": "acme", "document_id": "d", "source": "jane-roe.md", "content_hash": "h",
...                       "chunk_index": 0, "section": "", "text": "Jane Roe", "tags": ["hr"]})
>>> "Jane" in str(stored), open_payload(keys, stored)["text"], stored["source"] == codec.lookup("source", "jane-roe.md")
(False, 'Jane Roe', True)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

from keel.errors import PermissionDenied
from keel.keys import seal_text, unseal_text
from keel.retrieval.keyword import term_id as clear_term_id
from keel.types import Filters

PURPOSE = "index"
SEALED = "sealed"  # the payload field holding the sealed values
HASHED_FIELDS = ("document_id", "source", "content_hash")  # matched exactly
LIST_FIELDS = ("tags", "readers")  # lists of values matched exactly
SEALED_FIELDS = ("document_id", "source", "content_hash", "section", "text", "date")
_NAMESPACE = uuid.UUID("6f1f6f5e-4b1c-4a36-9a55-6b8f6e0b2c11")


def point_id(tenant: str, document_id: str, content_hash: str, chunk_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x1f{document_id}\x1f{content_hash}\x1f{chunk_index}"))


class PointCodec:
    """One tenant's points as stored without keys: every value in clear."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def point_id(self, document_id: str, content_hash: str, chunk_index: int) -> str:
        return point_id(self.tenant, document_id, content_hash, chunk_index)

    def term_id(self, term: str) -> int:
        return clear_term_id(term)

    def lookup(self, field: str, value: str) -> str:
        """The stored form of a value an exact-match filter on ``field`` compares."""
        return value

    def store(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def store_readers(self, readers: list[str]) -> list[str]:
        """The stored form of a document's ``readers`` field."""
        return [self.lookup("readers", r) for r in readers]

    def conditions(self, filters: Filters | None, principals: list[str] | None = None) -> list[tuple]:
        """``filters``' backend-neutral conditions, in the stored form of their values.

        ``principals`` (the asker's, :func:`keel.types.asker_principals`): a last condition
        ``("readable", "readers", values)``: a point without readers, or with one of these.
        ``None``: no permission condition (callers that see everything: benchmarks, admin)."""
        out: list[tuple] = []
        if principals is not None:
            out.append(("readable", "readers", [self.lookup("readers", p) for p in principals]))
        for kind, key, *args in (filters or Filters()).conditions():
            if kind == "match":
                out.append((kind, key, self.lookup(key, args[0])))
            elif kind == "any":
                out.append((kind, key, [self.lookup(key, v) for v in args[0]]))
            else:  # a date range: date_ts stays in clear
                out.append((kind, key, *args))
        return out


class SealedPointCodec(PointCodec):
    """One tenant's points as stored with keys (see the module docstring)."""

    def __init__(self, keys, tenant: str) -> None:
        super().__init__(tenant)
        self.keys = keys
        # Derived once per call (a document's chunks, a query's terms), never kept longer: a
        # forgotten tenant's key must stop working in this process too.
        self._key = keys.tenant_key(tenant, 1, create=True).key(PURPOSE)
        self._terms: dict[str, int] = {}

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}\x1f{value}".encode(), hashlib.sha256).digest()

    def point_id(self, document_id: str, content_hash: str, chunk_index: int) -> str:
        digest = self._mac("point", f"{document_id}\x1f{content_hash}\x1f{chunk_index}")
        return str(uuid.UUID(bytes=digest[:16], version=5))

    def term_id(self, term: str) -> int:
        found = self._terms.get(term)
        if found is None:  # sparse indices are uint32, like crc32's
            # Keyed BLAKE2b rather than HMAC: a chunk has ~100 terms, and this is 2.5x faster.
            digest = hashlib.blake2b(term.encode(), key=self._key, digest_size=4, person=b"keel-term").digest()
            found = self._terms[term] = int.from_bytes(digest, "big")
        return found

    def lookup(self, field: str, value: str) -> str:
        return self._mac(field, value).hex()[:32]

    def store(self, payload: dict[str, Any]) -> dict[str, Any]:
        stored = {k: v for k, v in payload.items() if k not in SEALED_FIELDS}
        stored.update({f: self.lookup(f, payload[f]) for f in HASHED_FIELDS})
        for f in LIST_FIELDS:
            if f in payload:
                stored[f] = [self.lookup(f, v) for v in payload[f]]
        secret = {f: payload[f] for f in SEALED_FIELDS if f in payload}
        stored[SEALED] = seal_text(self.keys, self.tenant, PURPOSE, json.dumps(secret, ensure_ascii=False))
        return stored


def point_codec(keys, tenant: str) -> PointCodec:
    """How ``tenant``'s points are stored: sealed with ``keys`` (a ``keel._codec.Keys``), or in
    clear when there are none (encryption off)."""
    return PointCodec(tenant) if keys is None else SealedPointCodec(keys, tenant)


def open_payload(keys, payload: dict[str, Any]) -> dict[str, Any]:
    """A stored payload with its sealed values back in clear (as :meth:`PointCodec.store` got it,
    tags aside). A payload written in clear (before encryption was on) is returned as is."""
    if SEALED not in payload:
        return payload
    if keys is None:
        raise PermissionDenied("this index holds sealed points but encryption is off here: no key opens them")
    opened = {k: v for k, v in payload.items() if k != SEALED}
    opened.update(json.loads(unseal_text(keys, payload["tenant"], PURPOSE, payload[SEALED])))
    return opened
