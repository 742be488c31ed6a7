"""Encryption at rest of the index and the answer cache: no planted value in clear on disk.

Each backend is built directly on a tmp dir with a fresh key store; the same run without keys
must find every planted value in the files, so the scan is known to look in the right place.
Also: erasure (``delete_tenant``, ``forget_tenant``) removes one tenant only, and keyed term
ids rank exactly like crc32 ids.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from keel._codec import Keys
from keel.llm.cache import AnswerCache, CachedAnswer
from keel.retrieval.store import ChunkIndex
from keel.types import Filters

DIM = 8
CARD = "4111 1111 1111 1111"
NAME = "Jane Quixotica"
SECTION = "Wibbleton Payroll"
SOURCE = "people/Zorblax Quixotica.md"
DOCUMENT = "doc-Zorblax-7"
TAG = "tagFrobnic"
DATE = "1987-06-05"
PLANTED = [CARD, NAME, SECTION, SOURCE, DOCUMENT, TAG, DATE, "Quixotica", "Zorblax"]


def make_keys(root: Path) -> Keys:
    return Keys(
        keys_dir=root / "keys", master_key_file=root / "master.key", keyring=root / "keyring.json",
        auto_create=True, create_master=True,
    )


def planted_in(root: Path, values: list[str] = PLANTED) -> dict[str, list[str]]:
    """Which files under ``root`` hold each value in clear (raw bytes: UTF-8 and UTF-16)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        # Preallocated (sparse) mmap files are mostly trailing zeros: hundreds of MB to skip.
        data = path.read_bytes().rstrip(b"\0") + b"\0\0"
        for value in values:
            if value.encode() in data or value.encode("utf-16-le") in data:
                found.setdefault(value, []).append(str(path.relative_to(root)))
    return found


# --- the index ----------------------------------------------------------------------------------


def open_index(backend: str, path: Path, keys):
    if backend == "client":
        return ChunkIndex(path=path, collection="rest", dimensions=DIM, keys=keys)
    pytest.importorskip("qdrant_edge")
    from keel.retrieval.edge import EdgeChunkIndex

    return EdgeChunkIndex(path=path, collection="rest", dimensions=DIM, keys=keys)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def put_secret_document(idx, rng, tenant: str = "acme") -> np.ndarray:
    vectors = unit(rng, 2)
    idx.replace_document(
        tenant=tenant, document_id=DOCUMENT, source=SOURCE, content_hash="v1", vectors=vectors, tags=[TAG], date=DATE,
        chunks=[
            {"text": f"Card {CARD} belongs to {NAME}.", "section": SECTION},
            {"text": f"{NAME} works in payroll.", "section": ""},
        ],
    )
    return vectors


@pytest.mark.parametrize("backend", ["client", "edge"])
@pytest.mark.parametrize("sealed", [True, False], ids=["keys", "no-keys"])
def test_index_files_hold_no_planted_value(backend, sealed, tmp_path):
    keys = make_keys(tmp_path) if sealed else None
    root = tmp_path / "index"
    rng = np.random.default_rng(1)
    idx = open_index(backend, root, keys)
    try:
        vectors = put_secret_document(idx, rng)
        hits = idx.search("acme", "Quixotica card", vectors[0], top_k=2, filters=Filters(source=SOURCE, tags=[TAG]))
        assert [(h.document_id, h.source, h.text) for h in hits] == [
            (DOCUMENT, SOURCE, f"Card {CARD} belongs to {NAME}."), (DOCUMENT, SOURCE, f"{NAME} works in payroll.")
        ]
        assert idx.search("acme", "payroll", vectors[1], filters=Filters(document_id=DOCUMENT))[0].text == f"{NAME} works in payroll."
        assert idx.search("acme", "payroll", vectors[1], filters=Filters(date_from=DATE, date_to=DATE)) != []
        assert idx.indexed_versions("acme", [DOCUMENT, "other"]) == {DOCUMENT: "v1"}
        if backend == "edge":  # a built (HNSW, merged) shard and its payload indexes too
            assert "error" not in idx.compact(wait=True)
            assert idx.search("acme", "Quixotica", vectors[0], top_k=1)[0].text == f"Card {CARD} belongs to {NAME}."
    finally:
        idx.close()
    found = planted_in(root)
    if sealed:
        assert found == {}
    else:  # the scan sees clear text where it is
        assert {"Quixotica", "Zorblax", NAME, SOURCE, DOCUMENT, TAG} <= set(found), found


@pytest.mark.parametrize("backend", ["client", "edge"])
def test_delete_tenant_removes_that_tenant_only(backend, tmp_path):
    keys = make_keys(tmp_path)
    rng = np.random.default_rng(2)
    idx = open_index(backend, tmp_path / "index", keys)
    try:
        put_secret_document(idx, rng, "acme")
        kept = put_secret_document(idx, rng, "globex")
        if backend == "edge":  # acme's points in a sealed shard, then in the active one too
            assert "error" not in idx.compact(wait=True)
            idx.replace_document(
                tenant="acme", document_id="late", source="late.md", content_hash="v1",
                chunks=[{"text": "late chunk"}], vectors=unit(rng, 1),
            )
            assert idx.delete_tenant("acme") == 3
        else:
            assert idx.delete_tenant("acme") == 2
        assert idx.delete_tenant("acme") == 0
        assert idx.stats("acme") == {"documents": 0, "chunks": 0}
        assert idx.search("acme", "Quixotica", kept[0], top_k=5) == []
        assert idx.stats("globex") == {"documents": 1, "chunks": 2}
        assert idx.search("globex", "Quixotica", kept[0], top_k=1)[0].text == f"Card {CARD} belongs to {NAME}."
    finally:
        idx.close()


def test_edge_delete_tenant_during_a_build(tmp_path):
    """A deletion that lands while a build copies the shard is replayed on the built copy."""
    pytest.importorskip("qdrant_edge")
    rng = np.random.default_rng(3)
    idx = open_index("edge", tmp_path / "index", make_keys(tmp_path))
    try:
        put_secret_document(idx, rng, "acme")
        put_secret_document(idx, rng, "globex")
        idx.compact(wait=False)
        assert idx.delete_tenant("acme") == 2
        assert "error" not in idx.compact(wait=True)
        assert idx.stats("acme") == {"documents": 0, "chunks": 0}
        assert idx.stats("globex") == {"documents": 1, "chunks": 2}
    finally:
        idx.close()


WORDS = "river stone lamp quartz orbit maple cedar signal copper harbor violet ember lantern otter".split()


def test_keyed_term_ids_rank_like_crc32(tmp_path):
    """Same chunks and vectors, one index in clear and one sealed: every query gets the same
    hits with the same scores (within a tenant; ties may come in another order)."""
    rng = np.random.default_rng(4)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(60)]
    vectors = unit(rng, len(texts))
    clear, sealed = ChunkIndex(dimensions=DIM), ChunkIndex(dimensions=DIM, keys=make_keys(tmp_path))
    for idx in (clear, sealed):
        for d in range(0, len(texts), 3):
            idx.replace_document(
                tenant="acme", document_id=f"d{d}", source=f"d{d}.md", content_hash="v1",
                chunks=[{"text": t} for t in texts[d : d + 3]], vectors=vectors[d : d + 3],
            )
    for q in range(12):
        query, qv = " ".join(rng.choice(WORDS, 2)), unit(rng, 1)[0]
        a, b = (idx.search("acme", query, qv, top_k=10, prefetch_k=20) for idx in (clear, sealed))
        assert [h.fused_score for h in a] == pytest.approx([h.fused_score for h in b], rel=1e-6)
        assert sorted((h.document_id, h.text, round(h.fused_score, 6)) for h in a) == sorted(
            (h.document_id, h.text, round(h.fused_score, 6)) for h in b
        )
    clear.close()
    sealed.close()


# --- the answer cache ---------------------------------------------------------------------------


QUESTION = f"What is the card number of {NAME}?"
ANSWER = f"{NAME}'s card is {CARD}."


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _entry(tenant: str, workflow_id: str = "wf-Zorblax") -> CachedAnswer:
    return CachedAnswer(tenant, "answer-v1", "m", "p", QUESTION, ["c1"], ANSWER, ["c1"], workflow_id, _unit(1, 0, 0))


@pytest.mark.parametrize("sealed", [True, False], ids=["keys", "no-keys"])
def test_cache_files_hold_no_planted_value(sealed, tmp_path):
    keys = make_keys(tmp_path) if sealed else None
    root = tmp_path / "cache"
    cache = AnswerCache(root / "answers.sqlite3", ttl_seconds=60, keys=keys)
    cache.store(_entry("acme"), now=0)
    exact = cache.lookup_exact("acme", "answer-v1", QUESTION, ["c1"], ["m"], now=1)
    assert (exact.question, exact.answer, exact.workflow_id, exact.provider) == (QUESTION, ANSWER, "wf-Zorblax", "p")
    hit, similarity = cache.lookup_semantic("acme", "answer-v1", _unit(1, 0.01, 0), ["c1", "c2"], ["m"], now=1)
    assert hit.answer == ANSWER and similarity > 0.99
    found = planted_in(root, [CARD, NAME, "Quixotica", "Zorblax"])
    if sealed:
        assert found == {}
    else:
        assert set(found) == {CARD, NAME, "Quixotica", "Zorblax"}, found


def test_cache_exact_key_is_keyed(tmp_path):
    """The stored key is an HMAC under the tenant's cache key: the plain hash of a guessed
    question does not find it."""
    from keel.llm.cache import exact_key

    keys = make_keys(tmp_path)
    cache = AnswerCache(tmp_path / "answers.sqlite3", ttl_seconds=60, keys=keys)
    cache.store(_entry("acme"), now=0)
    with sqlite3.connect(tmp_path / "answers.sqlite3") as db:
        (stored,) = db.execute("SELECT key FROM answers").fetchone()
    assert stored == exact_key("acme", "m", "answer-v1", QUESTION, ["c1"], keys)
    assert stored != exact_key("acme", "m", "answer-v1", QUESTION, ["c1"])


@pytest.mark.parametrize("sealed", [True, False], ids=["keys", "no-keys"])
def test_cache_forget_tenant(sealed, tmp_path):
    keys = make_keys(tmp_path) if sealed else None
    root = tmp_path / "cache"
    cache = AnswerCache(root / "answers.sqlite3", ttl_seconds=60, keys=keys)
    cache.store(_entry("acme"), now=0)
    cache.store(CachedAnswer("acme", "answer-v1", "m", "p", "other?", [], "B.", [], "wf-2", _unit(0, 1, 0)), now=0)
    cache.store(_entry("globex", workflow_id="wf-globex"), now=0)
    assert cache.forget_tenant("acme") == 2
    assert cache.forget_tenant("acme") == 0
    assert cache.lookup_exact("acme", "answer-v1", QUESTION, ["c1"], ["m"], now=1) is None
    assert cache.lookup_semantic("acme", "answer-v1", _unit(1, 0, 0), ["c1"], ["m"], now=1) is None
    assert cache.lookup_exact("globex", "answer-v1", QUESTION, ["c1"], ["m"], now=1).workflow_id == "wf-globex"
    if not sealed:  # deleted rows are zeroed and the WAL emptied: only globex's copy is left
        assert planted_in(root, ["wf-Zorblax", "other?", "wf-globex"]) == {"wf-globex": ["answers.sqlite3"]}


def test_cache_drops_a_table_from_before_sealing(tmp_path):
    path = tmp_path / "answers.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE answers (key TEXT PRIMARY KEY, tenant TEXT NOT NULL, prompt_version TEXT NOT NULL, "
            "model TEXT NOT NULL, provider TEXT NOT NULL, question TEXT NOT NULL, chunk_ids TEXT NOT NULL, "
            "answer TEXT NOT NULL, cited_chunk_ids TEXT NOT NULL, workflow_id TEXT NOT NULL, embedding BLOB, "
            "created REAL NOT NULL, expires REAL NOT NULL)"
        )
        db.execute("INSERT INTO answers VALUES ('k', 'acme', 'v', 'm', 'p', ?, '[]', ?, '[]', 'wf', NULL, 0, 1e12)", (QUESTION, ANSWER))
    db.close()
    cache = AnswerCache(path, ttl_seconds=60, keys=make_keys(tmp_path))
    assert planted_in(tmp_path, [CARD, NAME]) == {}
    cache.store(_entry("acme"), now=0)
    assert cache.lookup_exact("acme", "answer-v1", QUESTION, ["c1"], ["m"], now=1).answer == ANSWER


def test_forget_tenant_on_the_deployments_cache(tmp_path):
    """The erasure activity's entry point: by settings, without keys."""
    from types import SimpleNamespace

    from keel.llm.cache import forget_tenant

    settings = SimpleNamespace(answer_cache_path=tmp_path / "cache" / "answers.sqlite3", cache_ttl_seconds=60)
    assert forget_tenant(settings, "acme") == 0 and not settings.answer_cache_path.exists()
    cache = AnswerCache(settings.answer_cache_path, ttl_seconds=60, keys=make_keys(tmp_path))
    cache.store(_entry("acme"), now=0)
    cache.store(_entry("globex"), now=0)
    assert forget_tenant(settings, "acme") == 1
    assert cache.lookup_exact("globex", "answer-v1", QUESTION, ["c1"], ["m"], now=1) is not None
