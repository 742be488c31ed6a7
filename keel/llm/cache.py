"""Answer cache: exact and semantic, per tenant, with a TTL, in SQLite.

* **Exact**: keyed by (tenant, model, prompt version, scrubbed question, retrieved chunk ids in
  rank order). Any change to the index that changes what retrieval returns changes the key.
* **Semantic**: the same tenant, prompt version and model, a question whose embedding has a
  cosine similarity of at least ``semantic_threshold`` with a cached one, and every chunk the
  cached answer cites retrieved again for this question. The last condition keeps a
  near-identical question from being answered with sources that were since re-ingested,
  deleted or filtered out.

The tenant is part of every key and every query: there is no lookup across tenants.

At rest, with ``keys`` (encryption on): the question, answer, provider, chunk ids and run id
of an entry are sealed together with the tenant's ``cache`` key, and the exact key is a keyed
hash (HMAC under that key) instead of a plain hash, which would confirm a guessed question.
The tenant, model, prompt version, times and the question's embedding (what the lookups
select on) stay in clear. Deleted rows are zeroed (``secure_delete``, also without keys) and
:meth:`AnswerCache.forget_tenant` also empties the WAL, so erasure leaves no copy in the files.

SQLite in WAL mode serves every worker process of one host; several hosts need the file on
storage they share, or another store with the same methods.

>>> import tempfile, pathlib
>>> cache = AnswerCache(pathlib.Path(tempfile.mkdtemp()) / "c.sqlite3", ttl_seconds=60)
>>> cache.store(CachedAnswer("acme", "answer-v1", "m", "p", "q?", ["c1"], "A.", ["c1"], "wf"), now=0.0)
>>> cache.lookup_exact("acme", "answer-v1", "q?", ["c1"], ["m"], now=1.0).answer
'A.'
>>> cache.lookup_exact("other-tenant", "answer-v1", "q?", ["c1"], ["m"], now=1.0) is None
True
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keel.keys import lookup_key, seal_text, unseal_text

PURPOSE = "cache"
# body: the entry's text (see _BODY_FIELDS) as JSON, sealed (base64) when there are keys.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS answers (
        key TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        model TEXT NOT NULL,
        body TEXT NOT NULL,
        embedding BLOB,
        created REAL NOT NULL,
        expires REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS answers_scope ON answers (tenant, prompt_version, model, expires)",
    "CREATE INDEX IF NOT EXISTS answers_expires ON answers (expires)",
]
_BODY_FIELDS = ("provider", "question", "chunk_ids", "answer", "cited_chunk_ids", "workflow_id")


@dataclass
class CachedAnswer:
    tenant: str
    prompt_version: str
    model: str
    provider: str
    question: str
    chunk_ids: list[str]
    answer: str
    cited_chunk_ids: list[str]
    workflow_id: str  # the run that produced it
    embedding: np.ndarray | None = field(default=None, repr=False)


def exact_key(tenant: str, model: str, prompt_version: str, question: str, chunk_ids: list[str], keys=None) -> str:
    """The entry's primary key; keyed by the tenant's ``cache`` key when there are ``keys``."""
    if keys is None:
        return hashlib.sha256(json.dumps([tenant, model, prompt_version, question, chunk_ids]).encode()).hexdigest()
    return lookup_key(keys, tenant, PURPOSE, json.dumps([model, prompt_version, question, chunk_ids]))


class AnswerCache:
    """
    :param path: the SQLite file (created with its directory).
    :param ttl_seconds: how long an answer may be served.
    :param semantic_threshold: cosine similarity a semantic hit needs.
    :param semantic_candidates: the newest entries of a tenant compared per semantic lookup.
    :param keys: a ``keel._codec.Keys`` holding the key store: entries are sealed per tenant.
        ``None`` (encryption off): stored in clear.
    """

    def __init__(
        self,
        path: Path,
        ttl_seconds: float,
        semantic_threshold: float = 0.95,
        semantic_candidates: int = 5000,
        keys=None,
    ) -> None:
        self.path = Path(path)
        self.ttl_seconds = ttl_seconds
        self.semantic_threshold = semantic_threshold
        self.semantic_candidates = semantic_candidates
        self.keys = keys
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            _migrate(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA secure_delete=ON")  # a deleted entry's bytes are zeroed, not left in free pages
        return db

    def _body(self, entry: CachedAnswer) -> str:
        text = json.dumps({f: getattr(entry, f) for f in _BODY_FIELDS}, ensure_ascii=False)
        return text if self.keys is None else seal_text(self.keys, entry.tenant, PURPOSE, text)

    def _entry(self, row: sqlite3.Row) -> CachedAnswer:
        body = row["body"]
        if self.keys is not None:
            body = unseal_text(self.keys, row["tenant"], PURPOSE, body)
        return CachedAnswer(
            tenant=row["tenant"], prompt_version=row["prompt_version"], model=row["model"], **json.loads(body)
        )

    def store(self, entry: CachedAnswer, *, now: float) -> None:
        embedding = None if entry.embedding is None else np.asarray(entry.embedding, dtype=np.float32).tobytes()
        key = exact_key(entry.tenant, entry.model, entry.prompt_version, entry.question, entry.chunk_ids, self.keys)
        body = self._body(entry)
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM answers WHERE expires <= ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, entry.tenant, entry.prompt_version, entry.model, body, embedding, now, now + self.ttl_seconds),
            )

    def lookup_exact(
        self, tenant: str, prompt_version: str, question: str, chunk_ids: list[str], models: list[str], *, now: float
    ) -> CachedAnswer | None:
        candidates = [exact_key(tenant, m, prompt_version, question, chunk_ids, self.keys) for m in models]
        with closing(self._connect()) as db:
            for key in candidates:  # in chain order: the first provider's model first
                row = db.execute(
                    "SELECT * FROM answers WHERE key = ? AND tenant = ? AND expires > ?", (key, tenant, now)
                ).fetchone()
                if row is not None:
                    return self._entry(row)
        return None

    def lookup_semantic(
        self, tenant: str, prompt_version: str, embedding: np.ndarray, chunk_ids: list[str], models: list[str], *, now: float
    ) -> tuple[CachedAnswer, float] | None:
        marks = ",".join("?" * len(models))
        with closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT * FROM answers WHERE tenant = ? AND prompt_version = ? AND model IN ({marks}) "
                "AND expires > ? AND embedding IS NOT NULL ORDER BY created DESC LIMIT ?",
                (tenant, prompt_version, *models, now, self.semantic_candidates),
            ).fetchall()
        if not rows:
            return None
        matrix = np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])
        similarities = matrix @ np.asarray(embedding, dtype=np.float32)
        # The cited ids are sealed: open only the entries similar enough, most similar first (a
        # stable sort: among equals the newest, as before), and serve the first whose cited
        # chunks were all retrieved again.
        retrieved = set(chunk_ids)
        for i in np.argsort(-similarities, kind="stable"):
            if similarities[i] < self.semantic_threshold:
                break
            entry = self._entry(rows[i])
            if set(entry.cited_chunk_ids) <= retrieved:
                return entry, float(similarities[i])
        return None

    def forget_tenant(self, tenant: str) -> int:
        """Delete every entry of ``tenant`` (erasure); how many there were. Needs no key."""
        with closing(self._connect()) as db:
            with db:
                removed = db.execute("DELETE FROM answers WHERE tenant = ?", (tenant,)).rowcount
            # Old page images stay in the WAL until a checkpoint resets it.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed


def forget_tenant(settings, tenant: str) -> int:
    """Delete every cached answer of ``tenant`` from the deployment's cache (``KeelSettings``);
    how many there were. Needs no key, so it also cleans up after a forgotten tenant."""
    path = Path(settings.answer_cache_path)
    if not path.exists():
        return 0
    return AnswerCache(path, ttl_seconds=settings.cache_ttl_seconds).forget_tenant(tenant)


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table; drop one from before sealed bodies (its columns held the question and
    answer in clear; a cache may always start empty)."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(answers)")}
    if columns and "body" not in columns:
        db.execute("DROP TABLE IF EXISTS answers")  # another process may have just done it
    for statement in _SCHEMA:
        db.execute(statement)
