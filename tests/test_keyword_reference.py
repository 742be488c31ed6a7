"""The scalable BM25 (sparse vectors + Qdrant's IDF modifier) ranks like the textbook BM25.

Reference: ``rank_bm25.BM25Okapi`` over the same texts with the same tokenizer. The two differ on
purpose in small ways (Qdrant's IDF is ``ln(1 + (N-df+0.5)/(df+0.5))``, rank_bm25's is
``ln((N-df+0.5)/(df+0.5))`` with a floor; Keel bakes a fixed ``AVG_LEN`` into document weights
where rank_bm25 measures the corpus), so rankings are compared by top-10 overlap, not equality.
Both with term ids in clear (crc32) and keyed per tenant (encryption on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from keel.ingestion.chunking import chunk_elements
from keel.retrieval.keyword import B, K1, bm25_query_vector, tokenize
from keel.retrieval.sealed import open_payload, point_codec
from keel.retrieval.store import KEYWORD, ChunkIndex, _match, _sparse

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
N_DOCS = 200
N_QUERIES = 60
TENANT = "ref"

pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason="shared SciFact data not present")


def _read_jsonl(path: Path, n: int) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module", params=["clear", "sealed"])
def corpus_and_index(request, tmp_path_factory):
    docs = _read_jsonl(SCIFACT / "corpus.jsonl", N_DOCS)
    keys = None
    if request.param == "sealed":
        from keel._codec import Keys

        root = tmp_path_factory.mktemp("keys")
        keys = Keys(keys_dir=root / "keys", master_key_file=root / "master.key", keyring=root / "keyring.json",
                    auto_create=True, create_master=True)
    index = ChunkIndex(dimensions=4, keys=keys)
    chunk_ids, chunk_texts = [], []
    rng = np.random.default_rng(0)
    for doc in docs:
        chunks = chunk_elements(
            [{"type": "Title", "text": doc["title"]}, {"type": "NarrativeText", "text": doc["text"]}]
        )
        index.replace_document(
            tenant=TENANT, document_id=doc["_id"], source=doc["_id"], content_hash="v1",
            chunks=chunks, vectors=rng.normal(size=(len(chunks), 4)).astype(np.float32),  # dense side unused
        )
        chunk_ids += [f"{doc['_id']}#{i}" for i in range(len(chunks))]
        chunk_texts += [c["text"] for c in chunks]
    yield index, chunk_ids, chunk_texts
    index.close()


def _keel_top(index: ChunkIndex, query: str, k: int) -> list[str]:
    from qdrant_client import models

    terms = bm25_query_vector(query, term_ids=point_codec(index.keys, TENANT).term_id)
    response = index.client.query_points(
        index.collection, query=_sparse(terms), using=KEYWORD, limit=k,
        query_filter=models.Filter(must=[_match("tenant", TENANT)]), with_payload=True,
    )
    payloads = [open_payload(index.keys, p.payload) for p in response.points]
    return [f"{p['document_id']}#{p['chunk_index']}" for p in payloads]


def test_sparse_bm25_ranks_like_rank_bm25(corpus_and_index):
    from rank_bm25 import BM25Okapi

    index, chunk_ids, chunk_texts = corpus_and_index
    reference = BM25Okapi([tokenize(t) for t in chunk_texts], k1=K1, b=B)
    # Queries: the corpus' own titles (each has an obvious best chunk) and SciFact claims.
    titles = [t.split("\n", 1)[0] for t in chunk_texts[::10]][: N_QUERIES // 2]
    claims = [q["text"] for q in _read_jsonl(SCIFACT / "queries.jsonl", N_QUERIES // 2)]

    overlaps, top1_agree = [], 0
    for query in titles + claims:
        # Only chunks sharing a term with the query are candidates on the Keel side.
        scores = reference.get_scores(list(dict.fromkeys(tokenize(query))))
        ref_top = [chunk_ids[i] for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]
        keel_top = _keel_top(index, query, 10)
        assert keel_top, f"no BM25 hit for {query!r}"
        overlaps.append(len(set(ref_top) & set(keel_top)) / max(len(ref_top), 1))
        top1_agree += keel_top[0] == ref_top[0]

    n = len(titles + claims)
    # Measured (stemmed tokenizer): mean overlap 0.97, min 0.8, top-1 58/60.
    assert np.mean(overlaps) >= 0.85, np.mean(overlaps)
    assert min(overlaps) >= 0.5, min(overlaps)
    assert top1_agree >= 0.85 * n, (top1_agree, n)


def test_title_query_finds_its_document(corpus_and_index):
    index, chunk_ids, chunk_texts = corpus_and_index
    for i in range(0, len(chunk_texts), 25):
        title = chunk_texts[i].split("\n", 1)[0]
        top = _keel_top(index, title, 3)
        assert chunk_ids[i].split("#")[0] in {t.split("#")[0] for t in top}, title
