"""Answer cache: exact and semantic, per tenant, with a TTL, in SQLite.

* **Exact**: keyed by (tenant, model, prompt version, scrubbed question, retrieved chunk ids in
  rank order). Any change to the index that changes what retrieval returns changes the key.
* **Semantic**: the same tenant, prompt version and model, a question whose embedding has a
  cosine similarity of at least ``semantic_threshold`` with a cached one, and every chunk the
  cached answer cites retrieved again for this question. The last condition keeps a
  near-identical question from being answered with sources that were since re-ingested,
  deleted or filtered out.

The tenant is part of every key and every query: there is no lookup across tenants.

SQLite in WAL mode serves every worker process of one host; several hosts need the file on
storage they share, or another store with the same five methods.

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    question TEXT NOT NULL,
    chunk_ids TEXT NOT NULL,
    answer TEXT NOT NULL,
    cited_chunk_ids TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    embedding BLOB,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_scope ON answers (tenant, prompt_version, model, expires);
CREATE INDEX IF NOT EXISTS answers_expires ON answers (expires);
"""


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


def exact_key(tenant: str, model: str, prompt_version: str, question: str, chunk_ids: list[str]) -> str:
    return hashlib.sha256(json.dumps([tenant, model, prompt_version, question, chunk_ids]).encode()).hexdigest()


class AnswerCache:
    """
    :param path: the SQLite file (created with its directory).
    :param ttl_seconds: how long an answer may be served.
    :param semantic_threshold: cosine similarity a semantic hit needs.
    :param semantic_candidates: the newest entries of a tenant compared per semantic lookup.
    """

    def __init__(
        self, path: Path, ttl_seconds: float, semantic_threshold: float = 0.95, semantic_candidates: int = 5000
    ) -> None:
        self.path = Path(path)
        self.ttl_seconds = ttl_seconds
        self.semantic_threshold = semantic_threshold
        self.semantic_candidates = semantic_candidates
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def store(self, entry: CachedAnswer, *, now: float) -> None:
        embedding = None if entry.embedding is None else np.asarray(entry.embedding, dtype=np.float32).tobytes()
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM answers WHERE expires <= ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    exact_key(entry.tenant, entry.model, entry.prompt_version, entry.question, entry.chunk_ids),
                    entry.tenant,
                    entry.prompt_version,
                    entry.model,
                    entry.provider,
                    entry.question,
                    json.dumps(entry.chunk_ids),
                    entry.answer,
                    json.dumps(entry.cited_chunk_ids),
                    entry.workflow_id,
                    embedding,
                    now,
                    now + self.ttl_seconds,
                ),
            )

    def lookup_exact(
        self, tenant: str, prompt_version: str, question: str, chunk_ids: list[str], models: list[str], *, now: float
    ) -> CachedAnswer | None:
        keys = [exact_key(tenant, m, prompt_version, question, chunk_ids) for m in models]
        with closing(self._connect()) as db:
            for key in keys:  # in chain order: the first provider's model first
                row = db.execute(
                    "SELECT * FROM answers WHERE key = ? AND tenant = ? AND expires > ?", (key, tenant, now)
                ).fetchone()
                if row is not None:
                    return _entry(row)
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
        retrieved = set(chunk_ids)
        rows = [r for r in rows if set(json.loads(r["cited_chunk_ids"])) <= retrieved]
        if not rows:
            return None
        matrix = np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])
        similarities = matrix @ np.asarray(embedding, dtype=np.float32)
        best = int(np.argmax(similarities))
        if similarities[best] < self.semantic_threshold:
            return None
        return _entry(rows[best]), float(similarities[best])


def _entry(row: sqlite3.Row) -> CachedAnswer:
    return CachedAnswer(
        tenant=row["tenant"],
        prompt_version=row["prompt_version"],
        model=row["model"],
        provider=row["provider"],
        question=row["question"],
        chunk_ids=json.loads(row["chunk_ids"]),
        answer=row["answer"],
        cited_chunk_ids=json.loads(row["cited_chunk_ids"]),
        workflow_id=row["workflow_id"],
    )
