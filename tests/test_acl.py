"""Document permissions (readers) on both index backends, in clear and sealed: a search returns
only chunks of documents the asker may read (no readers, or the asker's user or one of its
groups among them), filtered inside the engine; changing a document's readers takes effect for
the next search without re-embedding; the answer cache never serves an answer citing a chunk
the asker may not read. No Temporal, a few seconds."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.errors import InvalidRequest
from keel.llm.cache import AnswerCache, CachedAnswer
from keel.types import asker_principals, reader_names
from tests.test_index_contract import BACKENDS, make_index, put, unit

USERS = ["alice", "bob", "carol"]
GROUPS = ["hr", "finance", "eng"]
PRINCIPALS = [f"user:{u}" for u in USERS] + [f"group:{g}" for g in GROUPS]

readers_st = st.lists(st.sampled_from(PRINCIPALS), max_size=3, unique=True)
asker_st = st.tuples(st.sampled_from([None, *USERS]), st.lists(st.sampled_from(GROUPS), max_size=2, unique=True))


@pytest.fixture(scope="module", params=BACKENDS)
def shared_index(request, tmp_path_factory):
    """One index per backend for all examples; each example writes its own tenant."""
    idx = make_index(request.param, tmp_path_factory.mktemp("acl") / "idx")
    yield request.param, idx
    idx.close()


def readable(readers: list[str], principal: str | None, groups: list[str]) -> bool:
    return not readers or bool(set(readers) & set(asker_principals(principal, groups)))


def visible(idx, tenant, query_vector, principal, groups, n, backend):
    """Document ids a search as (principal, groups) returns: fused, and on Edge each side alone."""
    principals = asker_principals(principal, groups)
    runs = [idx.search(tenant, "shared words", query_vector, top_k=n, prefetch_k=n, principals=principals)]
    if backend.startswith("edge"):  # the dense and keyword requests carry the filter themselves
        runs.append(idx._search(tenant, "shared words", None, top_k=n, prefetch_k=n, principals=principals))
        runs.append(idx._search(tenant, "x", query_vector, top_k=n, prefetch_k=n, principals=principals, keyword=False))
    return [{h.document_id for h in hits} for hits in runs]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    documents=st.lists(readers_st, min_size=1, max_size=5),
    askers=st.lists(asker_st, min_size=1, max_size=4),
    change=st.tuples(st.integers(min_value=0, max_value=4), readers_st),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_no_hit_outside_the_askers_permissions(shared_index, documents, askers, change, seed):
    backend, idx = shared_index
    tenant = f"t{uuid.uuid4().hex[:10]}"
    rng = np.random.default_rng(seed)
    for i, readers in enumerate(documents):
        put(idx, tenant, f"d{i}", ["shared words here", "shared words there"], rng, readers=readers)
    n = 2 * len(documents)
    q = unit(rng, 1)[0]

    def check():
        for principal, groups in askers:
            allowed = {f"d{i}" for i, r in enumerate(documents) if readable(r, principal, groups)}
            for found in visible(idx, tenant, q, principal, groups, n, backend):
                assert found <= allowed, (principal, groups, found - allowed)  # nothing outside
                assert found == allowed  # and everything inside (top_k covers every chunk)

    check()
    # Changing a document's readers: the next search sees it, with the same points (no re-embedding).
    which, readers = change[0] % len(documents), change[1]
    before = {h.chunk_id for h in idx.search(tenant, "shared", q, top_k=n, prefetch_k=n, principals=PRINCIPALS)}
    assert idx.set_readers(tenant, f"d{which}", readers) == 2
    documents[which] = readers
    check()
    after = {h.chunk_id for h in idx.search(tenant, "shared", q, top_k=n, prefetch_k=n, principals=PRINCIPALS)}
    assert before == after
    idx.delete_tenant(tenant)


@pytest.mark.parametrize("backend", BACKENDS)
def test_points_without_readers_stay_readable_by_everyone(backend, tmp_path):
    """Points written before readers existed have no ``readers`` field: public, as they were."""
    from keel.retrieval.sealed import point_codec
    from keel.retrieval.store import DENSE, KEYWORD, chunk_records

    idx = make_index(backend, tmp_path / "idx")
    try:
        rng = np.random.default_rng(3)
        records = chunk_records(
            tenant="acme", document_id="old", source="old.md", content_hash="h", chunks=[{"text": "legacy lens"}],
            vectors=unit(rng, 1), codec=point_codec(idx.keys, "acme"),
        )
        for r in records:
            del r.payload["readers"]
        if backend.startswith("client"):
            from qdrant_client import models

            idx.client.upsert(idx.collection, points=[
                models.PointStruct(id=r.id, vector={DENSE: r.vector, KEYWORD: models.SparseVector(
                    indices=r.keyword.indices, values=r.keyword.values)}, payload=r.payload) for r in records
            ], wait=True)
        else:
            import qdrant_edge as qe

            idx.shards[idx.active].update(qe.UpdateOperation.upsert_points([
                qe.Point(r.id, {DENSE: r.vector, KEYWORD: qe.SparseVector(r.keyword.indices, r.keyword.values)}, r.payload)
                for r in records
            ]))
        put(idx, "acme", "secret", ["legacy lens notes"], rng, readers=["group:hr"])
        q = unit(rng, 1)[0]
        assert {h.document_id for h in idx.search("acme", "legacy lens", q, top_k=5)} == {"old"}
        assert {h.document_id for h in idx.search("acme", "legacy lens", q, top_k=5, principals=["group:hr"])} == {"old", "secret"}
        # and a set_readers on it restricts it like any other document
        idx.set_readers("acme", "old", ["user:bob"])
        assert idx.search("acme", "legacy lens", q, top_k=5) == []
    finally:
        idx.close()


def test_readers_are_stored_as_keyed_hashes_when_sealed(tmp_path):
    idx = make_index("client-sealed", tmp_path / "idx")
    try:
        put(idx, "acme", "d", ["the lens"], np.random.default_rng(0), readers=["user:jane.roe", "group:hr"])
        points, _ = idx.client.scroll(idx.collection, limit=10, with_payload=True)
        assert points and all("jane" not in str(p.payload) and "group:hr" not in str(p.payload) for p in points)
        assert len(points[0].payload["readers"]) == 2
    finally:
        idx.close()


def test_set_readers_reaches_sealed_shards_and_builds_in_progress(tmp_path, monkeypatch):
    pytest.importorskip("qdrant_edge")
    from keel.retrieval import edge

    idx = make_index("edge", tmp_path / "idx")
    rng = np.random.default_rng(5)
    q = unit(rng, 1)[0]
    try:
        put(idx, "acme", "d1", ["lens restoration notes"], rng)
        with idx._maintenance():
            idx._seal()  # d1 now lives in a sealed shard, its build queued
        assert idx.set_readers("acme", "d1", ["group:hr"]) == 1
        assert idx.search("acme", "lens", q) == []
        assert [h.document_id for h in idx.search("acme", "lens", q, principals=["group:hr"])] == ["d1"]

        # While the build works on a copy of the shard, a change is journaled and replayed on
        # the built shard before it replaces the original.
        real_run = edge.subprocess.run

        def build_meanwhile(command, *args, **kwargs):
            if "-c" in command:  # the child building the copy (not the copy itself)
                idx.set_readers("acme", "d1", ["user:bob"])
            return real_run(command, *args, **kwargs)

        monkeypatch.setattr(edge.subprocess, "run", build_meanwhile)
        report = idx.compact()
        assert report.get("journal_replayed") == 1 and "error" not in report, report
        assert idx.search("acme", "lens", q, principals=["group:hr"]) == []
        assert [h.document_id for h in idx.search("acme", "lens", q, principals=["user:bob"])] == ["d1"]
    finally:
        idx.close()
    reopened = make_index("edge", tmp_path / "idx")
    try:
        assert [h.document_id for h in reopened.search("acme", "lens", q, principals=["user:bob"])] == ["d1"]
        assert reopened.search("acme", "lens", q) == []
    finally:
        reopened.close()


def test_principal_names():
    assert asker_principals("user:alice", ["group:hr", "hr"]) == ["group:hr", "user:alice"]
    assert reader_names([]) == []
    for bad in ["alice", "team:x", "user:", ":x"]:
        with pytest.raises(InvalidRequest):
            reader_names([bad])


def test_answer_cache_never_serves_an_answer_citing_what_the_asker_cannot_read(tmp_path):
    """An answer cached for an asker who may read a restricted document is served (exact or
    semantic) only to askers whose own, filtered retrieval returns every chunk it cites."""
    idx = make_index("client", tmp_path / "idx")
    cache = AnswerCache(tmp_path / "cache.sqlite3", ttl_seconds=60, semantic_threshold=0.9)
    try:
        rng = np.random.default_rng(11)
        put(idx, "acme", "public", ["the lens was restored"], rng)
        put(idx, "acme", "hr", ["the lens restorer was paid"], rng, readers=["group:hr"])
        q = unit(rng, 1)[0]

        def retrieve(principal, groups):
            hits = idx.search("acme", "lens restored", q, top_k=5, principals=asker_principals(principal, groups))
            return [h.chunk_id for h in hits], {h.document_id: h.chunk_id for h in hits}

        hr_ids, hr_docs = retrieve("alice", ["hr"])
        cache.store(CachedAnswer("acme", "v", "m", "p", "who restored the lens?", hr_ids, "A.", [hr_docs["hr"]], "wf",
                                 embedding=q), now=0.0)
        for principal, groups in itertools.product([None, "bob"], [[], ["finance"]]):
            ids, _ = retrieve(principal, groups)
            assert cache.lookup_exact("acme", "v", "who restored the lens?", ids, ["m"], now=1.0) is None
            assert cache.lookup_semantic("acme", "v", q, ids, ["m"], now=1.0) is None
        again, _ = retrieve("carol", ["hr"])
        assert cache.lookup_exact("acme", "v", "who restored the lens?", again, ["m"], now=1.0).answer == "A."
        # Permissions changed: the next ask of the same asker no longer gets it.
        idx.set_readers("acme", "hr", ["user:dave"])
        ids, _ = retrieve("carol", ["hr"])
        assert cache.lookup_exact("acme", "v", "who restored the lens?", ids, ["m"], now=1.0) is None
        assert cache.lookup_semantic("acme", "v", q, ids, ["m"], now=1.0) is None
    finally:
        idx.close()
