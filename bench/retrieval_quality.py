"""Retrieval quality of Keel's index on a BEIR-layout data set (e.g. SciFact).

    python bench/retrieval_quality.py --data ../shared/data/scifact [--split train] [--limit-queries N]

The corpus goes through Keel's real indexing path: each document becomes the elements
``[Title, NarrativeText]`` → :func:`ingestion.chunking.chunk_elements` (chunk settings from
:class:`keel.config.KeelSettings`) → :class:`ingestion.embedding.Embedder` →
:meth:`retrieval.edge.EdgeChunkIndex.replace_document` (Keel's default embedded engine) in a
temporary folder (tenant ``bench``, document id = BEIR ``_id``). **PII scrubbing is off** for this benchmark: SciFact is
public scientific text, and the scrubber would only add noise and minutes.

Each query is run three ways: ``hybrid`` is :meth:`EdgeChunkIndex.search` exactly as Keel calls
it (dense + BM25 fused with RRF), ``bm25`` and ``dense`` query one side alone. Chunk
hits are aggregated to documents (best chunk score per document) and scored with
``pytrec_eval`` (nDCG@10, recall@100; a query with no hit counts as 0). One JSON line is printed.

Hybrid nDCG@10 comes from a search with Keel's default ``prefetch_k``; hybrid recall@100 needs a
deeper list, so it comes from a second search with ``top_k=prefetch_k=DEEP_K``.

Corpus and query embeddings are cached under ``.keel/bench-cache/`` keyed by (model, chunk
settings, data file hash), so trying another keyword side or fusion does not re-embed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.offline import configure_offline  # noqa: E402

configure_offline()

from keel.activities.evaluate import index_beir_documents, read_jsonl, read_qrels  # noqa: E402  (BEIR files, as keel eval reads them)
from keel.config import KeelSettings  # noqa: E402
from keel.ingestion.chunking import chunk_elements, searchable_text  # noqa: E402
from keel.retrieval.edge import EdgeChunkIndex  # noqa: E402

TENANT = "bench"
CACHE_DIR = ROOT / ".keel" / "bench-cache"
NDCG_TOP_K = 40  # chunks fetched for nDCG@10 (enough for 10 distinct documents)
DEEP_K = 200  # chunks fetched for recall@100 (enough for 100 distinct documents)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    parser.add_argument("--split", default="train", choices=["train", "dev", "test"])
    parser.add_argument("--limit-queries", type=int, default=None)
    args = parser.parse_args(argv)
    settings = KeelSettings()
    t0 = time.perf_counter()

    corpus = read_jsonl(args.data / "corpus.jsonl")
    qrels = read_qrels(args.data / "qrels" / f"{args.split}.tsv")
    all_queries = [q for q in read_jsonl(args.data / "queries.jsonl") if q["_id"] in qrels]
    queries = all_queries[: args.limit_queries] if args.limit_queries else all_queries
    qrels = {q["_id"]: qrels[q["_id"]] for q in queries}

    docs = []  # (document_id, chunks)
    for doc in corpus:
        elements = [{"type": "Title", "text": doc.get("title") or ""}, {"type": "NarrativeText", "text": doc["text"]}]
        elements = [e for e in elements if e["text"].strip()]
        chunks = chunk_elements(elements, max_tokens=settings.chunk_max_tokens, overlap_tokens=settings.chunk_overlap_tokens)
        docs.append((str(doc["_id"]), chunks))

    chunk_key = f"{settings.embedding_model}|{settings.chunk_max_tokens}|{settings.chunk_overlap_tokens}"
    all_chunks = [searchable_text(c) for _, chunks in docs for c in chunks]
    embedder = _LazyEmbedder(settings.embed_batch_size)
    vectors, corpus_cached = _cached_embeddings(
        "corpus", chunk_key, _file_hash(args.data / "corpus.jsonl"), all_chunks, embedder
    )
    qvectors, _ = _cached_embeddings(  # all of the split's queries, so --limit-queries reuses the cache
        f"queries-{args.split}", settings.embedding_model, _file_hash(args.data / "queries.jsonl"),
        [q["text"] for q in all_queries], embedder,
    )
    qvectors = qvectors[: len(queries)]
    t_embed = time.perf_counter()

    workdir = tempfile.TemporaryDirectory(prefix="keel-quality-")
    index = EdgeChunkIndex(path=Path(workdir.name), collection="bench", dimensions=vectors.shape[1])
    index_beir_documents(index, TENANT, docs, vectors)
    t_index = time.perf_counter()

    runs: dict[str, dict[str, dict[str, float]]] = {"hybrid": {}, "hybrid_deep": {}, "bm25": {}, "dense": {}}
    for query, qvec in zip(queries, qvectors):
        qid, text = query["_id"], query["text"]
        hits = index.search(TENANT, text, qvec, top_k=NDCG_TOP_K, prefetch_k=settings.prefetch_k)
        runs["hybrid"][qid] = _by_document((h.document_id, h.fused_score) for h in hits)
        hits = index.search(TENANT, text, qvec, top_k=DEEP_K, prefetch_k=DEEP_K)
        runs["hybrid_deep"][qid] = _by_document((h.document_id, h.fused_score) for h in hits)
        # One side alone: the same search without the other list (single-list RRF keeps its order).
        hits = index._search(TENANT, text, None, top_k=DEEP_K, prefetch_k=DEEP_K)
        runs["bm25"][qid] = _by_document((h.document_id, h.fused_score) for h in hits)
        hits = index._search(TENANT, text, qvec, top_k=DEEP_K, prefetch_k=DEEP_K, keyword=False)
        runs["dense"][qid] = _by_document((h.document_id, h.fused_score) for h in hits)
    t_query = time.perf_counter()
    index.close()
    workdir.cleanup()

    hybrid = _evaluate(qrels, runs["hybrid"])
    hybrid["recall@100"] = _evaluate(qrels, runs["hybrid_deep"])["recall@100"]
    result = {
        "split": args.split,
        "n_queries": len(queries),
        "hybrid": {"ndcg@10": hybrid["ndcg@10"], "recall@100": hybrid["recall@100"]},
        "hybrid_deep": _evaluate(qrels, runs["hybrid_deep"]),
        "bm25": _evaluate(qrels, runs["bm25"]),
        "dense": _evaluate(qrels, runs["dense"]),
        "n_documents": len(docs),
        "n_chunks": len(all_chunks),
        "embedding_cache_hit": corpus_cached,
        "seconds": {
            "embed": round(t_embed - t0, 1),
            "index": round(t_index - t_embed, 1),
            "query": round(t_query - t_index, 1),
            "total": round(t_query - t0, 1),
        },
    }
    print(json.dumps(result))


def _by_document(hits) -> dict[str, float]:
    """Chunk hits → document scores (best chunk per document)."""
    best: dict[str, float] = {}
    for document_id, score in hits:
        if document_id not in best or score > best[document_id]:
            best[document_id] = score
    return best


def _evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate({qid: docs for qid, docs in run.items() if docs})
    # pytrec_eval skips queries without results; they count as 0 over all judged queries.
    ndcg = sum(m["ndcg_cut_10"] for m in per_query.values()) / len(qrels)
    recall = sum(m["recall_100"] for m in per_query.values()) / len(qrels)
    return {"ndcg@10": round(ndcg, 4), "recall@100": round(recall, 4)}


class _LazyEmbedder:
    """Loads the model only when something is not in the cache."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._embedder = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            from keel.ingestion.embedding import Embedder

            self._embedder = Embedder(batch_size=self.batch_size)
        return self._embedder.embed(texts)


def _cached_embeddings(kind: str, key: str, data_hash: str, texts: list[str], embedder: _LazyEmbedder) -> tuple[np.ndarray, bool]:
    digest = hashlib.sha256(f"{key}|{data_hash}".encode()).hexdigest()[:24]
    path = CACHE_DIR / f"{kind}-{digest}.npz"
    text_hash = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    if path.exists():
        cached = np.load(path)
        # Texts can differ under the same key (e.g. --limit-queries, chunker code changes): check.
        if str(cached["text_hash"]) == text_hash:
            return cached["vectors"], True
    vectors = embedder.embed(texts)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors, text_hash=np.array(text_hash))
    tmp.replace(path)
    return vectors, False


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


if __name__ == "__main__":
    main()
