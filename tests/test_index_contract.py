"""One contract for both chunk-index backends: qdrant-client (ChunkIndex, in memory / local
files) and Qdrant Edge (EdgeChunkIndex, in a tmp dir), each in clear and sealed with tenant keys
(``-sealed``: encryption on, Keel's default). Small N, no Temporal, a few seconds."""

from __future__ import annotations

import time

import numpy as np
import pytest

from keel.errors import InvalidFilter, MissingTenant
from keel.retrieval.store import ChunkIndex
from keel.types import Filters

DIM = 16
BACKENDS = ["client", "edge", "client-sealed", "edge-sealed"]

from hypothesis import Phase, given, settings
from hypothesis import strategies as st


def make_keys(path):
    """A key store next to ``path``: reopening the index finds the same keys."""
    from keel._codec import Keys

    root = path.parent / f"{path.name}-keys"
    return Keys(keys_dir=root / "keys", master_key_file=root / "master.key", keyring=root / "keyring.json",
                auto_create=True, create_master=True)


def make_index(backend: str, path, *, persistent: bool = False):
    engine, _, sealed = backend.partition("-")
    keys = make_keys(path) if sealed else None
    if engine == "client":
        return ChunkIndex(path=path if persistent else None, collection="contract", dimensions=DIM, keys=keys)
    pytest.importorskip("qdrant_edge")
    from keel.retrieval.edge import EdgeChunkIndex

    return EdgeChunkIndex(path=path, collection="contract", dimensions=DIM, keys=keys)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def index(backend, tmp_path):
    idx = make_index(backend, tmp_path / "idx")
    yield idx
    idx.close()


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def put(idx, tenant, doc, texts, rng, content_hash="h1", vectors=None, **metadata):
    chunks = [{"text": t, "section": f"s{i}"} for i, t in enumerate(texts)]
    vecs = unit(rng, len(texts)) if vectors is None else vectors
    return idx.replace_document(
        tenant=tenant, document_id=doc, source=f"{doc}.md", content_hash=content_hash, chunks=chunks, vectors=vecs,
        **metadata,
    )


def test_idempotent_reupsert(index):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 3)
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta"]
    assert put(index, "acme", "d1", texts, rng, vectors=vecs) == (3, 0)
    assert put(index, "acme", "d1", texts, rng, vectors=vecs) == (3, 0)
    assert index.stats("acme") == {"documents": 1, "chunks": 3}
    hits = index.search("acme", "delta epsilon", vecs[1], top_k=10)
    assert len(hits) == 3 and len({h.chunk_id for h in hits}) == 3


def test_replace_removes_stale_version_from_dense_and_keyword(index):
    rng = np.random.default_rng(2)
    old_vecs = unit(rng, 2)
    put(index, "acme", "doc", ["obsolete quokka paragraph", "second old chunk"], rng, "v1", old_vecs)
    new_vecs = unit(rng, 1)
    assert put(index, "acme", "doc", ["fresh wombat paragraph"], rng, "v2", new_vecs) == (1, 2)
    assert index.stats("acme") == {"documents": 1, "chunks": 1}
    # keyword side: the old version's unique word finds nothing of the old version
    hits = index.search("acme", "quokka", old_vecs[0], top_k=10)
    assert all("quokka" not in h.text for h in hits)
    # dense side: the old version's exact vector does not bring the old chunk back
    assert [h.text for h in hits] == ["fresh wombat paragraph"]
    assert index.search("acme", "wombat", new_vecs[0], top_k=1)[0].text == "fresh wombat paragraph"


def test_a_chunks_context_is_keyword_indexed_but_not_shown(index):
    # "Cost / It cost $236,000." names no project; its document's title, carried as context, does.
    rng = np.random.default_rng(6)
    vecs = unit(rng, 2)
    chunks = [
        {"section": "Cost", "text": "Cost\nIt cost $236,000.", "context": "Solar conversion"},
        {"section": "Repairs", "text": "Repairs\nThe storm repairs cost $1.27 million."},
    ]
    index.replace_document(tenant="acme", document_id="d", source="d.md", content_hash="h", chunks=chunks, vectors=vecs)
    # The dense side prefers the storm chunk (its own vector); the word only its context holds wins.
    hits = index.search("acme", "solar", vecs[1], top_k=2)
    assert [h.text for h in hits] == ["Cost\nIt cost $236,000.", "Repairs\nThe storm repairs cost $1.27 million."]


def test_delete_document(index):
    rng = np.random.default_rng(3)
    put(index, "acme", "a", ["keep this aardvark"], rng)
    put(index, "acme", "b", ["drop this badger", "and this one"], rng)
    index.delete_document("acme", "b")
    assert index.stats("acme") == {"documents": 1, "chunks": 1}
    hits = index.search("acme", "badger", unit(rng, 1)[0], top_k=10)
    assert [h.document_id for h in hits] == ["a"]


def test_indexed_versions_reports_the_current_version_per_tenant(index):
    rng = np.random.default_rng(5)
    put(index, "t1", "a", ["first version"], rng, "v1")
    put(index, "t1", "a", ["second version", "longer"], rng, "v2")
    put(index, "t1", "b", ["other"], rng, "vb")
    put(index, "t2", "a", ["other tenant"], rng, "x")
    assert index.indexed_versions("t1", ["a", "b", "missing"]) == {"a": "v2", "b": "vb"}
    assert index.indexed_versions("t2", ["a", "b"]) == {"a": "x"}
    assert index.indexed_versions("t1", []) == {}


def test_stats_per_tenant(index):
    rng = np.random.default_rng(4)
    put(index, "t1", "a", ["one", "two", "three"], rng)
    put(index, "t1", "b", ["four"], rng)
    put(index, "t2", "a", ["five", "six"], rng)
    assert index.stats("t1") == {"documents": 2, "chunks": 4}
    assert index.stats("t2") == {"documents": 1, "chunks": 2}
    assert index.stats("nobody") == {"documents": 0, "chunks": 0}


@pytest.mark.parametrize("tenant", ["", "   "])
def test_tenant_required(index, tenant):
    rng = np.random.default_rng(5)
    with pytest.raises(MissingTenant):
        index.search(tenant, "anything", unit(rng, 1)[0])
    with pytest.raises(MissingTenant):
        put(index, tenant, "d", ["text"], rng)
    with pytest.raises(MissingTenant):
        index.delete_document(tenant, "d")
    with pytest.raises(MissingTenant):
        index.stats(tenant)


def test_keyword_only_match_ranks_first(index):
    rng = np.random.default_rng(6)
    query_vec = unit(rng, 1)[0]
    # ten chunks that are dense-close to the query, one that only matches the keyword
    near = query_vec + 0.05 * unit(rng, 10)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    put(index, "acme", "near", [f"generic filler text number {i}" for i in range(10)], rng, vectors=near)
    far = -query_vec[None, :]
    put(index, "acme", "kw", ["the xylophone calibration procedure"], rng, vectors=far)
    hits = index.search("acme", "xylophone", query_vec, top_k=3)
    assert hits[0].document_id == "kw"
    assert hits[0].fused_score >= hits[1].fused_score
    assert hits[0].score == pytest.approx(-1.0, abs=1e-4)  # score is the cosine


def test_reopen_keeps_data(backend, tmp_path):
    rng = np.random.default_rng(7)
    vecs = unit(rng, 2)
    idx = make_index(backend, tmp_path / "p", persistent=True)
    put(idx, "acme", "d", ["persisted pangolin", "second"], rng, vectors=vecs)
    put(idx, "acme", "gone", ["deleted"], rng)
    idx.delete_document("acme", "gone")
    idx.close()
    idx = make_index(backend, tmp_path / "p", persistent=True)
    try:
        assert idx.stats("acme") == {"documents": 1, "chunks": 2}
        assert idx.search("acme", "pangolin", vecs[0], top_k=1)[0].text == "persisted pangolin"
    finally:
        idx.close()


WORDS = "river stone lamp quartz orbit maple cedar signal copper harbor violet ember".split()


def _check_isolation(idx, ops: list[tuple[str, str, int]], queries: list[tuple[str, str]], seed: int) -> None:
    """Each example gets its own tenant namespace in one shared index (index creation is the
    slow part). ``n > 0`` puts a version of n chunks, ``n == 0`` deletes the document. Every
    hit must be a live document of the querying tenant, and each tenant's counts must match
    its own operations (a delete or replace never touches another tenant's same-named doc)."""
    rng = np.random.default_rng(seed)
    ns = f"x{seed}-"
    live: dict[str, dict[str, int]] = {tenant: {} for tenant in TENANTS}
    for tenant, doc, n in ops:
        if n == 0:
            idx.delete_document(ns + tenant, doc)
            live[tenant].pop(doc, None)
            continue
        texts = [f"{tenant} " + " ".join(rng.choice(WORDS, 5)) for _ in range(n)]
        put(idx, ns + tenant, doc, texts, rng, content_hash=f"h{n}")  # same content → same chunk count
        live[tenant][doc] = n
    for tenant in TENANTS:
        expected = {"documents": len(live[tenant]), "chunks": sum(live[tenant].values())}
        assert idx.stats(ns + tenant) == expected
    for tenant, words in queries:
        hits = idx.search(ns + tenant, f"{words} {' '.join(TENANTS)}", unit(rng, 1)[0], top_k=20, prefetch_k=50)
        for hit in hits:
            assert hit.text.split()[0] == tenant  # every chunk's text starts with its owner
            assert hit.document_id in live[tenant]  # never a deleted or replaced document
        assert len(hits) == min(20, sum(live[tenant].values()))


TENANTS = ["t0", "t1", "t2", "t3"]


# No shrinking: each example writes to a real index, and a failure's example is small anyway.
@settings(max_examples=25, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def _isolation_property(idx, counter, data) -> None:
    ops = data.draw(st.lists(
        st.tuples(st.sampled_from(TENANTS), st.sampled_from(["a", "b", "c"]), st.integers(0, 4)),
        min_size=1, max_size=14,
    ))
    queries = data.draw(st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(WORDS)), min_size=1, max_size=6))
    _check_isolation(idx, ops, queries, seed=next(counter))


def test_no_query_returns_another_tenants_chunk(backend, tmp_path):
    """Property test (hypothesis) over random puts, replaces and deletes across tenants."""
    idx = make_index(backend, tmp_path / "iso")
    try:
        _isolation_property(idx, iter(range(10_000)))
    finally:
        idx.close()


# --- Edge-only: the tiered layout keeps the contract across maintenance -----------------------


def test_edge_compaction_keeps_contract(tmp_path):
    pytest.importorskip("qdrant_edge")
    from keel.retrieval.edge import EdgeChunkIndex

    rng = np.random.default_rng(8)
    idx = EdgeChunkIndex(path=tmp_path / "e", collection="contract", dimensions=DIM)
    try:
        vecs = unit(rng, 2)
        put(idx, "acme", "old", ["sealed narwhal text", "more"], rng, "v1", vecs)
        put(idx, "acme", "moved", ["moving okapi"], rng, "v1")
        report = idx.compact(wait=True)
        assert "error" not in report, report
        assert len(idx.sealed) == 1
        # after the swap: the same id re-upserted moves to the active shard (no duplicate)
        put(idx, "acme", "moved", ["moving okapi"], rng, "v1")
        # a new version replaces the sealed one
        assert put(idx, "acme", "old", ["new narwhal text"], rng, "v2") == (1, 2)
        assert idx.stats("acme") == {"documents": 2, "chunks": 2}
        hits = idx.search("acme", "narwhal okapi", vecs[0], top_k=10)
        assert sorted(h.text for h in hits) == ["moving okapi", "new narwhal text"]
        # merge everything into one optimized shard, then reopen
        assert "error" not in idx.compact(merge=True, wait=True)
        assert len(idx.sealed) == 1
    finally:
        idx.close()
    idx = EdgeChunkIndex(path=tmp_path / "e", collection="contract", dimensions=DIM)
    try:
        assert idx.stats("acme") == {"documents": 2, "chunks": 2}
    finally:
        idx.close()


def test_edge_compactions_overlap_with_writes_and_queries(tmp_path):
    """A compaction requested while another runs (auto-sealing under a stream of writes) waits
    for it and then runs; neither deadlocks with the writers, and no document is lost."""
    pytest.importorskip("qdrant_edge")
    import threading

    from keel.retrieval.edge import EdgeChunkIndex

    rng = np.random.default_rng(12)
    idx = EdgeChunkIndex(path=tmp_path / "o", collection="contract", dimensions=DIM, seal_at_points=40)
    stop, written, failures = threading.Event(), [], []

    def writer():
        wrng = np.random.default_rng(13)
        d = 0
        while not stop.is_set():
            try:
                put(idx, "acme", f"w{d}", ["steady writer text"] * 5, wrng)
            except Exception as e:  # pragma: no cover - reported below
                failures.append(e)
                return
            written.append(d)
            d += 1

    try:
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        while len(written) < 20:  # 100 points: the 40-point active shard auto-seals meanwhile
            time.sleep(0.01)
        done = []
        t = threading.Thread(target=lambda: done.append(idx.compact(wait=True)), daemon=True)
        t.start()
        t.join(timeout=300)
        stop.set()
        w.join(timeout=60)
        assert done and "error" not in done[0], "compaction deadlocked or failed"
        assert not failures and not w.is_alive()
        assert idx.stats("acme") == {"documents": len(written), "chunks": 5 * len(written)}
        assert all("error" not in c for c in idx.compaction_log) and len(idx.compaction_log) >= 2
        assert len(idx.search("acme", "steady writer", unit(rng, 1)[0], top_k=3)) == 3
    finally:
        stop.set()
        idx.close()


def test_edge_rrf_matches_engine_fusion(tmp_path):
    """Our cross-shard RRF equals the engine's Fusion.Rrf on a single shard."""
    qe = pytest.importorskip("qdrant_edge")
    from keel.retrieval.edge import EdgeChunkIndex
    from keel.retrieval.keyword import bm25_query_vector
    from keel.retrieval.store import DENSE, KEYWORD, RRF_K

    rng = np.random.default_rng(9)
    idx = EdgeChunkIndex(path=tmp_path / "f", collection="contract", dimensions=DIM)
    try:
        for d in range(6):
            put(idx, "acme", f"d{d}", [" ".join(rng.choice(WORDS, 6)) for _ in range(5)], rng)
        q = unit(rng, 1)[0]
        ours = idx.search("acme", "river quartz", q, top_k=8, prefetch_k=10)
        terms = bm25_query_vector("river quartz")
        flt = qe.Filter(must=[qe.FieldCondition(key="tenant", match=qe.MatchValue("acme"))])
        engine = idx.shards[idx.active].query(qe.QueryRequest(
            limit=8, query=qe.Fusion.Rrf(k=RRF_K), filter=flt,
            prefetches=[
                qe.Prefetch(limit=10, query=qe.Query.Nearest(q.tolist(), using=DENSE), filter=flt),
                qe.Prefetch(limit=10, query=qe.Query.Nearest(qe.SparseVector(terms.indices, terms.values), using=KEYWORD), filter=flt),
            ],
        ))
        assert [h.fused_score for h in ours] == pytest.approx([p.score for p in engine], rel=1e-5)
    finally:
        idx.close()


def test_metadata_filters_narrow_the_search(index):
    rng = np.random.default_rng(10)
    put(index, "acme", "a", ["shared lemur words"], rng, tags=["finance", "2023"], date="2023-03-01")
    put(index, "acme", "b", ["shared lemur words"], rng, tags=["legal"], date="2024-06-30")
    put(index, "acme", "c", ["shared lemur words"], rng)  # no tags, no date
    put(index, "other", "d", ["shared lemur words"], rng, tags=["finance"], date="2023-03-01")
    q = unit(rng, 1)[0]

    def docs(**kw):
        return sorted(h.document_id for h in index.search("acme", "lemur", q, top_k=10, filters=Filters(**kw)))

    assert docs() == ["a", "b", "c"]
    assert docs(document_id="b") == ["b"]
    assert docs(source="a.md") == ["a"]
    assert docs(tags=("finance",)) == ["a"]  # never the other tenant's "finance" document
    assert docs(tags=("legal", "finance")) == ["a", "b"]
    assert docs(tags=("nope",)) == []
    assert docs(date_from="2023-01-01") == ["a", "b"]  # c has no date: outside every range
    assert docs(date_to="2023-03-01") == ["a"]  # inclusive
    assert docs(date_from="2023-03-02", date_to="2024-06-30") == ["b"]
    assert docs(tags=("finance",), date_from="2024-01-01") == []
    with pytest.raises(InvalidFilter):
        docs(date_from="March 2023")
    with pytest.raises(InvalidFilter):
        docs(date_from="2024-01-02", date_to="2024-01-01")


def test_new_version_with_new_metadata_replaces_the_old(index):
    rng = np.random.default_rng(11)
    put(index, "acme", "a", ["lemur text"], rng, content_hash="v1", tags=["draft"])
    put(index, "acme", "a", ["lemur text"], rng, content_hash="v2", tags=["final"])
    q = unit(rng, 1)[0]
    assert index.search("acme", "lemur", q, filters=Filters(tags=("draft",))) == []
    assert [h.document_id for h in index.search("acme", "lemur", q, filters=Filters(tags=("final",)))] == ["a"]

