"""Retrieval latency benchmark: Qdrant Edge (EdgeChunkIndex) vs qdrant-client local mode (ChunkIndex).

    python bench/retrieval_latency.py --points 100000 --backend both --dir /tmp/keel-bench

Builds (or reuses, keyed by N and seed) an index of N chunks: Zipf-distributed vocabulary
sentences (~120 tokens), random normalized 384-d vectors, 10 chunks per document, 100 tenants
(a tenant filter selects ~1%). Prints one JSON object: ingest points/s, reopen seconds, RSS,
p50/p95 ms for dense, keyword, hybrid (engine-level, unfiltered) and hybrid+tenant (the public
``search``), the same while a writer thread keeps upserting, and for Edge the longest query
stall while maintenance (seal + out-of-process optimize + swap) runs. qdrant-client local mode is
measured at min(N, --client-cap) points; ratios compare the two (at their different sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keel.retrieval.keyword import bm25_query_vector  # noqa: E402
from keel.retrieval.store import DENSE, KEYWORD, RRF_K, ChunkIndex  # noqa: E402

DIM = 384
TENANTS = 100
CHUNKS_PER_DOC = 10


# --- synthetic corpus ------------------------------------------------------------------------


class Corpus:
    def __init__(self, seed: int = 7, vocab: int = 50_000, zipf_s: float = 1.07) -> None:
        rng = np.random.default_rng(seed)
        syll = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "dra", "gon", "el", "qu", "zi", "ba", "tor"]
        words = set()
        while len(words) < vocab:
            words.add("".join(rng.choice(syll, rng.integers(2, 5))))
        self.words = np.array(sorted(words))
        rng.shuffle(self.words)
        ranks = np.arange(1, vocab + 1)
        p = 1.0 / ranks**zipf_s
        self.p = p / p.sum()
        self.seed = seed

    def chunk_texts(self, rng: np.random.Generator, n: int) -> list[str]:
        lengths = np.clip(rng.normal(120, 30, n).astype(int), 20, 250)
        tokens = rng.choice(len(self.words), size=int(lengths.sum()), p=self.p)
        out, pos = [], 0
        for length in lengths:
            sent = self.words[tokens[pos : pos + length]]
            pos += length
            out.append(" ".join(sent) + ".")
        return out

    def queries(self, n: int, seed: int = 99) -> list[str]:
        rng = np.random.default_rng(seed)
        return [" ".join(self.words[rng.integers(50, 5000, rng.integers(2, 5))]) for _ in range(n)]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def documents(corpus: Corpus, start_doc: int, n_points: int, seed: int):
    """Yield (tenant, document_id, chunks, vectors) for documents start_doc.. covering n_points."""
    rng = np.random.default_rng(seed + start_doc)
    d, made = start_doc, 0
    while made < n_points:
        k = min(CHUNKS_PER_DOC, n_points - made)
        texts = corpus.chunk_texts(rng, k)
        yield f"tenant{d % TENANTS:03d}", f"doc{d:07d}", [{"text": t, "section": ""} for t in texts], unit(rng, k)
        d += 1
        made += k


def ingest(index, corpus: Corpus, start_doc: int, n_points: int, seed: int = 1) -> float:
    t0 = time.perf_counter()
    for tenant, doc, chunks, vecs in documents(corpus, start_doc, n_points, seed):
        index.replace_document(tenant=tenant, document_id=doc, source=f"{doc}.txt", content_hash="v1", chunks=chunks, vectors=vecs)
    return time.perf_counter() - t0


# --- backends --------------------------------------------------------------------------------


def open_index(backend: str, directory: Path):
    if backend == "edge":
        from keel.retrieval.edge import EdgeChunkIndex

        return EdgeChunkIndex(path=directory, collection="bench", dimensions=DIM)  # Keel's default shard size
    return LockedChunkIndex(path=directory, collection="bench", dimensions=DIM)


class LockedChunkIndex(ChunkIndex):
    """qdrant-client local mode is not thread-safe (a query racing an upsert raises IndexError
    in its payload mask): serialize it, as a caller sharing one instance would have to."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._lock = threading.Lock()

    def replace_document(self, **kw):
        with self._lock:
            return super().replace_document(**kw)

    def search(self, *a, **kw):
        with self._lock:
            return super().search(*a, **kw)


def raw_query(backend: str, index, mode: str, text: str, vec: np.ndarray) -> None:
    """Engine-level dense / keyword / hybrid without a tenant filter (benchmark only)."""
    if backend == "edge":
        index._search(
            None, text if mode != "dense" else "", vec if mode != "keyword" else None,
            top_k=5, prefetch_k=40, keyword=mode != "dense",
        )
        return
    from qdrant_client import models

    terms = bm25_query_vector(text)
    sparse = models.SparseVector(indices=terms.indices, values=terms.values)
    if mode == "dense":
        index.client.query_points(index.collection, query=vec.tolist(), using=DENSE, limit=5, with_payload=True)
    elif mode == "keyword":
        index.client.query_points(index.collection, query=sparse, using=KEYWORD, limit=5, with_payload=True)
    else:
        index.client.query_points(
            index.collection,
            prefetch=[models.Prefetch(query=vec.tolist(), using=DENSE, limit=40), models.Prefetch(query=sparse, using=KEYWORD, limit=40)],
            query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)), limit=5, with_payload=True,
        )


def pct(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "max_ms": round(float(a.max()), 2), "n": len(a)}


def measure(backend, index, queries, vecs, n_queries) -> dict:
    out = {}
    for mode in ("dense", "keyword", "hybrid", "hybrid_tenant"):
        lat = []
        for i in range(n_queries):
            text, vec = queries[i % len(queries)], vecs[i % len(vecs)]
            t0 = time.perf_counter()
            if mode == "hybrid_tenant":
                index.search(f"tenant{i % TENANTS:03d}", text, vec, top_k=5, prefetch_k=40)
            else:
                raw_query(backend, index, mode, text, vec)
            lat.append(time.perf_counter() - t0)
        out[mode] = pct(lat)
    return out


class Ticker(threading.Thread):
    """Wakes every 5 ms; the longest gap is how long the whole process (GIL) was stalled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_gap = 0.0

    def run(self) -> None:
        last = time.perf_counter()
        while not self.stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last - 0.005)
            last = now


def queries_while(backend, index, queries, vecs, busy: threading.Event, min_seconds: float) -> dict:
    lat, i = [], 0
    t_end = time.perf_counter() + min_seconds
    while busy.is_set() or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        index.search(f"tenant{i % TENANTS:03d}", queries[i % len(queries)], vecs[i % len(vecs)], top_k=5, prefetch_k=40)
        lat.append(time.perf_counter() - t0)
        i += 1
        time.sleep(0.002)
        if not busy.is_set() and time.perf_counter() >= t_end:
            break
    return pct(lat)


def concurrent_ingest(backend, index, corpus, queries, vecs, start_doc, seconds, maintenance=False) -> dict:
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        d = start_doc
        while not stop.is_set():
            for tenant, doc, chunks, v in documents(corpus, d, CHUNKS_PER_DOC, seed=5):
                index.replace_document(tenant=tenant, document_id=doc, source=doc, content_hash="v1", chunks=chunks, vectors=v)
                written[0] += len(chunks)
            d += 1

    busy = threading.Event()
    ticker = Ticker()
    ticker.start()
    w = threading.Thread(target=writer, daemon=True)
    t0 = time.perf_counter()
    w.start()
    result: dict = {}
    if maintenance:
        busy.set()

        def maint() -> None:
            result["compaction"] = index.compact(wait=True)
            busy.clear()

        m = threading.Thread(target=maint, daemon=True)
        m.start()
        result["queries"] = queries_while(backend, index, queries, vecs, busy, seconds)
        m.join()
    else:
        result["queries"] = queries_while(backend, index, queries, vecs, busy, seconds)
    stop.set()
    w.join()
    elapsed = time.perf_counter() - t0
    ticker.stop.set()
    ticker.join()
    result["writer_points_per_s"] = round(written[0] / elapsed, 1)
    result["written_points"] = written[0]
    result["longest_process_stall_ms"] = round(ticker.max_gap * 1000, 1)
    return result


def rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def run_backend(backend: str, n: int, base: Path, corpus: Corpus, args) -> dict:
    directory = base / f"{backend}-{n}-s{corpus.seed}"
    marker = directory / "BUILT"
    out: dict = {"backend": backend, "points": n}
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        index = open_index(backend, directory)
        ticker = Ticker()  # Edge seals and builds shards in the background while this ingests
        ticker.start()
        seconds = ingest(index, corpus, 0, n)
        out["ingest_points_per_s"] = round(n / seconds, 1)
        out["ingest_s"] = round(seconds, 1)
        if backend == "edge":  # seal the rest and let the queued HNSW builds finish
            t0 = time.perf_counter()
            index.compact(wait=True)
            out["ingest_drain_builds_s"] = round(time.perf_counter() - t0, 1)
        index.close()
        ticker.stop.set()
        ticker.join()
        out["ingest_longest_process_stall_ms"] = round(ticker.max_gap * 1000, 1)
        if backend == "edge":
            log = index.compaction_log
            out["ingest_compactions"] = {
                "count": len(log),
                "errors": [c["error"] for c in log if "error" in c],
                "max_build_s": max((c.get("build_s", 0) for c in log), default=0),
                "max_swap_load_s": max((c.get("load_s", 0) for c in log), default=0),
                "max_swap_s": max((c.get("swap_s", 0) for c in log), default=0),
                "max_shard_points": max((c.get("points", 0) for c in log), default=0),
                "max_build_peak_rss_mb": max((c.get("child", {}).get("peak_rss_mb") or 0 for c in log), default=0),
            }
        marker.write_text(json.dumps(out))
    else:
        out.update({k: v for k, v in json.loads(marker.read_text()).items() if k.startswith("ingest")})
        out["reused_index"] = True
    t0 = time.perf_counter()
    index = open_index(backend, directory)
    out["reopen_s"] = round(time.perf_counter() - t0, 3)
    out["rss_mb_after_reopen"] = rss_mb()
    if backend == "edge":
        out["shards"] = index.info()
    qrng = np.random.default_rng(3)
    queries, vecs = corpus.queries(200), unit(qrng, 200)
    measure(backend, index, queries, vecs, 10)  # warm-up
    out["latency"] = measure(backend, index, queries, vecs, args.queries)
    extra_doc = 10_000_000  # writes during the bench go to fresh document ids
    out["during_ingest"] = concurrent_ingest(backend, index, corpus, queries, vecs, extra_doc, args.concurrent_seconds)
    if backend == "edge" and not args.no_maintenance:
        out["during_maintenance"] = concurrent_ingest(
            backend, index, corpus, queries, vecs, extra_doc + 100_000, args.concurrent_seconds, maintenance=True
        )
        out["shards_after_maintenance"] = index.info()
        out["latency_after_maintenance"] = measure(backend, index, queries, vecs, args.queries)
    out["rss_mb_end"] = rss_mb()
    index.close()
    if backend == "edge" and not args.no_maintenance:
        marker.unlink()  # the maintenance run changed the index; rebuild next time
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, required=True)
    ap.add_argument("--backend", choices=["edge", "client", "both"], default="both")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/keel-retrieval-bench"))
    ap.add_argument("--client-cap", type=int, default=10_000, help="qdrant-client local mode size cap")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--concurrent-seconds", type=float, default=10.0)
    ap.add_argument("--no-maintenance", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    corpus = Corpus()
    report: dict = {"points": args.points, "cpus": os.cpu_count()}
    if args.backend in ("edge", "both"):
        report["edge"] = run_backend("edge", args.points, args.dir, corpus, args)
    if args.backend in ("client", "both"):
        report["client"] = run_backend("client", min(args.points, args.client_cap), args.dir, corpus, args)
    if "edge" in report and "client" in report:
        e, c = report["edge"], report["client"]
        report["edge_speedup_x"] = {  # >1 means Edge is better (throughput e/c, times c/e)
            "sizes": f"client at {c['points']} points vs edge at {e['points']} points",
            "ingest_points_per_s": round(e["ingest_points_per_s"] / c["ingest_points_per_s"], 1),
            "reopen_s": round(c["reopen_s"] / max(e["reopen_s"], 1e-6), 1),
            **{f"{m}_p95": round(c["latency"][m]["p95_ms"] / e["latency"][m]["p95_ms"], 1) for m in e["latency"]},
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
