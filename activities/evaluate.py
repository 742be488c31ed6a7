"""Activities of evaluations (``keel eval``) and what-if re-runs (``keel whatif``).

Everything heavy happens here: reading the data set, chunking and embedding a BEIR corpus into
an evaluation index, searching it, scoring with ``ranx``, scoring answers, writing the per-query
rows (JSON and CSV) under the run's output folder. Workflows get back aggregates and paths only.

Retrieval evaluation uses the path of ``bench/retrieval_quality.py`` exactly, so their numbers
agree: each BEIR document becomes ``[Title, NarrativeText]`` elements →
:func:`keel.ingestion.chunking.chunk_elements` → :class:`keel.ingestion.embedding.Embedder` →
:meth:`keel.retrieval.edge.EdgeChunkIndex.replace_document` in a folder of its own (tenant
``eval``, document id = BEIR ``_id``, PII scrubbing off, stored in clear: a public benchmark's
text), then :meth:`EdgeChunkIndex.search` as Keel calls it. The index is keyed by (corpus file,
chunk settings, embedding model) under ``<data_dir>/evals/index/``: configurations that differ
only in search-time settings share one index, and a later evaluation reuses it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.activities._runtime import heartbeating, runtime

EVAL_TENANT = "eval"
NDCG_TOP_K = 40  # chunks fetched for the @10 metrics (as bench/retrieval_quality.py)
DEEP_K = 200  # chunks fetched for recall@100 (as bench/retrieval_quality.py)
RETRIEVAL_METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "precision@10"]
RETRIEVAL_MODES = ("hybrid", "dense", "bm25")


def _bad(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidRequest", non_retryable=True)


# --- configurations ----------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """One side of an evaluation: the run settings it overrides (TOML keys of the same names).

    Retrieval: ``top_k`` (chunks an answer sees; ``context_recall`` is measured on them),
    ``prefetch_k``, ``min_relevance``, ``retrieval_mode`` (``hybrid``: dense + BM25 fused with
    RRF as Keel searches; ``dense`` or ``bm25``: one side alone); index-time: ``chunk_max_tokens``,
    ``chunk_overlap_tokens``, ``embedding_model``. Answers: ``prompt_version``, ``max_cost_usd``,
    ``use_cache`` (default off, so one side is not served the other's answers).
    """

    name: str
    top_k: int = 5
    prefetch_k: int = 40
    min_relevance: float = 0.25
    retrieval_mode: str = "hybrid"
    chunk_max_tokens: int = 180
    chunk_overlap_tokens: int = 30
    embedding_model: str = "all-MiniLM-L6-v2"
    prompt_version: str = "answer-v2"
    max_cost_usd: float | None = None
    use_cache: bool = False
    source: str = ""  # the TOML file it came from

    @property
    def index_key(self) -> tuple:
        return (self.chunk_max_tokens, self.chunk_overlap_tokens, self.embedding_model)


# Settings a configuration may name that no run takes today: said plainly instead of ignored.
NOT_PER_RUN = {
    "model": "the LLM model is the deployment's provider chain (KEEL_PROVIDERS / keel.toml), not a run input",
    "llm_model": "the LLM model is the deployment's provider chain (KEEL_PROVIDERS / keel.toml), not a run input",
    "provider": "the provider chain is the deployment's (KEEL_PROVIDERS / keel.toml), not a run input",
    "providers": "the provider chain is the deployment's (KEEL_PROVIDERS / keel.toml), not a run input",
    "alpha": "Keel fuses dense and BM25 with RRF, which has no weight; use retrieval_mode = dense | bm25 | hybrid",
    "hybrid_weight": "Keel fuses dense and BM25 with RRF, which has no weight; use retrieval_mode = dense | bm25 | hybrid",
}


def config_from_toml(text: str, *, name: str, defaults: dict[str, Any], source: str = "") -> EvalConfig:
    """An :class:`EvalConfig` from a TOML document: flat keys, or the same keys under ``[eval]``."""
    import tomllib

    data = tomllib.loads(text)
    if isinstance(data.get("eval"), dict):
        data = {**{k: v for k, v in data.items() if k != "eval"}, **data["eval"]}
    allowed = {f.name for f in fields(EvalConfig)} - {"source"}
    for key in data:
        if key in NOT_PER_RUN:
            raise ValueError(f"{source or name}: {key!r} cannot differ per evaluation: {NOT_PER_RUN[key]}")
        if key not in allowed:
            raise ValueError(f"{source or name}: unknown setting {key!r}; allowed: {', '.join(sorted(allowed))}")
    values = {**defaults, **data}
    values.setdefault("name", name)
    config = EvalConfig(**values, source=source)
    validate_config(config)
    return config


def validate_config(c: EvalConfig) -> None:
    from keel.llm.prompts import PROMPTS
    from keel.types import ChunkSpec, EmbeddingSpec, RetrievalSettings

    RetrievalSettings(top_k=c.top_k, prefetch_k=c.prefetch_k, min_relevance=c.min_relevance)
    ChunkSpec(max_tokens=c.chunk_max_tokens, overlap_tokens=c.chunk_overlap_tokens)
    EmbeddingSpec(model=c.embedding_model)
    if c.retrieval_mode not in RETRIEVAL_MODES:
        raise ValueError(f"unknown retrieval_mode {c.retrieval_mode!r}; allowed: {', '.join(RETRIEVAL_MODES)}")
    if c.prompt_version not in PROMPTS:
        raise ValueError(f"unknown prompt_version {c.prompt_version!r}; allowed: {', '.join(PROMPTS)}")


# --- data sets ---------------------------------------------------------------------------------


def index_beir_documents(index, tenant: str, docs: list[tuple[str, list[dict]]], vectors) -> None:
    """Index BEIR documents (id, chunks) with their chunks' vectors, in order (``keel eval`` and
    ``bench/retrieval_quality.py`` build their indexes the same way)."""
    offset = 0
    for document_id, chunks in docs:
        n = len(chunks)
        content_hash = hashlib.sha256("\x1f".join(c["text"] for c in chunks).encode()).hexdigest()
        index.replace_document(
            tenant=tenant, document_id=document_id, source=f"beir:{document_id}",
            content_hash=content_hash, chunks=chunks, vectors=vectors[offset : offset + n],
        )
        offset += n


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t"):
            if not row or row[0] == "query-id":
                continue
            qrels[row[0]][row[1]] = int(row[2])
    return dict(qrels)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_kind(data: Path) -> str:
    """``retrieval`` (a BEIR folder) or ``answers`` (a JSONL of questions, or a folder holding one)."""
    if data.is_dir() and (data / "corpus.jsonl").exists() and (data / "queries.jsonl").exists():
        return "retrieval"
    if _questions_file(data) is not None:
        return "answers"
    raise FileNotFoundError(
        f"{data}: neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) nor a JSONL of questions"
    )


def _questions_file(data: Path) -> Path | None:
    if data.is_file() and data.suffix in (".jsonl", ".json"):
        return data
    if data.is_dir():
        for name in ("questions.jsonl", "answers.jsonl"):
            if (data / name).exists():
                return data / name
    return None


def _split_qrels(data: Path, split: str) -> Path:
    path = data / "qrels" / f"{split}.tsv"
    if path.exists():
        return path
    found = sorted((data / "qrels").glob("*.tsv"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{data}/qrels: no {split}.tsv" + (f" (found {', '.join(p.name for p in found)})" if found else ""))


def _retrieval_queries(data: Path, split: str, limit: int | None) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """The split's judged queries in queries.jsonl order (the bench's set), and their qrels."""
    qrels = read_qrels(_split_qrels(data, split))
    queries = [q for q in read_jsonl(data / "queries.jsonl") if str(q["_id"]) in qrels]
    if limit:
        queries = queries[:limit]
    return queries, {str(q["_id"]): qrels[str(q["_id"])] for q in queries}


@dataclass
class QuestionSpec:
    question: str
    facts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    id: str = ""


def read_questions(data: Path, limit: int | None) -> list[QuestionSpec]:
    path = _questions_file(data)
    if path is None:
        raise FileNotFoundError(f"{data}: no JSONL of questions")
    out = []
    for i, row in enumerate(read_jsonl(path)):
        if "question" not in row:
            raise ValueError(f"{path}:{i + 1}: no \"question\"")
        out.append(
            QuestionSpec(
                question=str(row["question"]), facts=[str(f) for f in row.get("facts", [])],
                sources=[str(s) for s in row.get("sources", [])], id=str(row.get("id", i + 1)),
            )
        )
    return out[:limit] if limit else out


# --- inspect -----------------------------------------------------------------------------------


@dataclass
class InspectInput:
    data: str
    run_id: str
    out: str | None = None
    split: str = "train"
    limit: int | None = None


@dataclass
class Inspected:
    kind: str  # retrieval | answers
    out: str  # the output folder, absolute
    n_queries: int


@activity.defn(name="keel.eval_inspect")
def eval_inspect(inp: InspectInput) -> Inspected:
    data = Path(inp.data)
    try:
        kind = data_kind(data)
        if kind == "retrieval":
            n = len(_retrieval_queries(data, inp.split, inp.limit)[0])
        else:
            n = len(read_questions(data, inp.limit))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise _bad(str(e)) from None
    out = Path(inp.out) if inp.out else runtime().settings.data_dir / "evals" / inp.run_id
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return Inspected(kind=kind, out=str(out), n_queries=n)


# --- retrieval: the index ----------------------------------------------------------------------


@dataclass
class BuildIndexInput:
    data: str
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    embedding_model: str


@dataclass
class BuiltIndex:
    path: str
    documents: int
    chunks: int
    reused: bool
    seconds: float


def _index_dir(inp: BuildIndexInput) -> Path:
    corpus = Path(inp.data) / "corpus.jsonl"
    key = f"{_file_hash(corpus)}|{inp.embedding_model}|{inp.chunk_max_tokens}|{inp.chunk_overlap_tokens}"
    return runtime().settings.data_dir.resolve() / "evals" / "index" / hashlib.sha256(key.encode()).hexdigest()[:24]


@activity.defn(name="keel.eval_build_index")
@heartbeating
def eval_build_index(inp: BuildIndexInput) -> BuiltIndex:
    """Chunk, embed and index a BEIR corpus once per (corpus, chunk settings, model); idempotent:
    a finished index is reused, an unfinished one (a crashed attempt) is rebuilt."""
    import numpy as np

    from keel.ingestion.chunking import chunk_elements, searchable_text
    from keel.retrieval.edge import EdgeChunkIndex
    from keel.types import EmbeddingSpec

    t0 = time.perf_counter()
    path = _index_dir(inp)
    done = path / "complete.json"
    if done.exists():
        info = json.loads(done.read_text())
        return BuiltIndex(str(path), info["documents"], info["chunks"], True, round(time.perf_counter() - t0, 1))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    docs = []
    for doc in read_jsonl(Path(inp.data) / "corpus.jsonl"):
        elements = [{"type": "Title", "text": doc.get("title") or ""}, {"type": "NarrativeText", "text": doc["text"]}]
        elements = [e for e in elements if e["text"].strip()]
        chunks = chunk_elements(elements, max_tokens=inp.chunk_max_tokens, overlap_tokens=inp.chunk_overlap_tokens)
        docs.append((str(doc["_id"]), chunks))
    embedder = runtime().embedder(EmbeddingSpec(model=inp.embedding_model))
    texts = [searchable_text(c) for _, chunks in docs for c in chunks]
    # One call, as the bench: sentence-transformers batches by length within a call, so the
    # vectors are the bench's bit for bit (@heartbeating heartbeats meanwhile).
    vectors = embedder.embed(texts) if texts else np.zeros((0, 384), dtype=np.float32)
    index = EdgeChunkIndex(path=path, collection="eval", dimensions=vectors.shape[1])
    try:
        index_beir_documents(index, EVAL_TENANT, docs, vectors)
    finally:
        index.close()
    done.write_text(json.dumps({"documents": len(docs), "chunks": len(texts)}))
    return BuiltIndex(str(path), len(docs), len(texts), False, round(time.perf_counter() - t0, 1))


# --- retrieval: search and score -----------------------------------------------------------------


@dataclass
class RetrievalEvalInput:
    data: str
    index_path: str
    config: EvalConfig
    out: str
    split: str = "train"
    limit: int | None = None


@dataclass
class ConfigMetrics:
    name: str
    metrics: dict[str, float]
    rows_file: str  # per-query rows (JSON) of this configuration
    n: int


def _by_document(hits) -> dict[str, float]:
    """Chunk hits → document scores (best chunk per document), as the bench."""
    best: dict[str, float] = {}
    for document_id, score in hits:
        if document_id not in best or score > best[document_id]:
            best[document_id] = score
    return best


def score_runs(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], metrics: list[str]) -> dict[str, dict[str, float]]:
    """Per-query scores with ranx; a query without any hit scores 0 (as in the bench)."""
    from ranx import Qrels, Run, evaluate

    judged = {q: {d: r for d, r in docs.items()} for q, docs in qrels.items() if docs}
    present = {q: _trec_order(docs) for q, docs in run.items() if docs and q in judged}
    per_query = {q: {m: 0.0 for m in metrics} for q in judged}
    if present:
        r = Run(present)
        evaluate(Qrels(judged), r, metrics, return_mean=False, make_comparable=True)
        for m in metrics:
            for q, v in r.scores[m].items():
                per_query[q][m] = float(v)
    return per_query


def _trec_order(docs: dict[str, float]) -> dict[str, float]:
    """Scores that rank as trec_eval ranks (score descending, ties by document id descending).

    RRF gives equal scores often (rank r on one side only is 1/(k + r) for any document), and
    ranx breaks ties otherwise than trec_eval: on SciFact that alone moves nDCG@10 by ~0.005.
    With this, ``keel eval`` and ``bench/retrieval_quality.py`` (pytrec_eval) agree exactly."""
    order = sorted(sorted(docs.items(), key=lambda kv: kv[0], reverse=True), key=lambda kv: -kv[1])
    return {d: float(len(order) - i) for i, (d, _) in enumerate(order)}


@activity.defn(name="keel.eval_retrieval")
@heartbeating
def eval_retrieval(inp: RetrievalEvalInput) -> ConfigMetrics:
    """Every judged query of the split through the configuration's search; ranx metrics; the
    per-query rows written to ``<out>/<config>.retrieval.json``."""
    from keel.retrieval.edge import EdgeChunkIndex
    from keel.types import EmbeddingSpec

    c = inp.config
    queries, qrels = _retrieval_queries(Path(inp.data), inp.split, inp.limit)
    embedder = runtime().embedder(EmbeddingSpec(model=c.embedding_model))
    qvectors = embedder.embed([q["text"] for q in queries])
    index = EdgeChunkIndex(path=Path(inp.index_path), collection="eval", dimensions=qvectors.shape[1] if len(qvectors) else 384)
    main: dict[str, dict[str, float]] = {}
    deep: dict[str, dict[str, float]] = {}
    context: dict[str, list[str]] = {}
    seconds: list[float] = []
    top = max(NDCG_TOP_K, c.top_k)
    try:
        for i, (query, qvec) in enumerate(zip(queries, qvectors)):
            qid, text = str(query["_id"]), query["text"]
            t = time.perf_counter()
            hits = _search(index, c.retrieval_mode, text, qvec, top_k=top, prefetch_k=c.prefetch_k)
            seconds.append(time.perf_counter() - t)
            main[qid] = _by_document((h.document_id, h.fused_score) for h in hits)
            context[qid] = list(dict.fromkeys(h.document_id for h in hits[: c.top_k]))
            hits = _search(index, c.retrieval_mode, text, qvec, top_k=DEEP_K, prefetch_k=max(DEEP_K, c.prefetch_k))
            deep[qid] = _by_document((h.document_id, h.fused_score) for h in hits)
            if i % 100 == 0 and activity.in_activity():
                activity.heartbeat(i)
    finally:
        index.close()
    per_query = score_runs(qrels, main, ["ndcg@10", "recall@10", "mrr@10", "precision@10"])
    deep_scores = score_runs(qrels, deep, ["recall@100"])
    rows = []
    for query in queries:
        qid = str(query["_id"])
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        ranked = list(_trec_order(main[qid]))
        row = {"id": qid, "query": query["text"], **per_query[qid], "recall@100": deep_scores[qid]["recall@100"]}
        row["context_recall"] = len(relevant & set(context[qid])) / len(relevant) if relevant else 0.0
        row["top10"] = ranked[:10]
        row["relevant"] = sorted(relevant)
        rows.append(row)
    metrics = {m: _mean(r[m] for r in rows) for m in [*RETRIEVAL_METRICS, "context_recall"]}
    metrics["search_ms"] = round(1000 * _mean(seconds), 2)
    out = Path(inp.out) / f"{_safe(c.name)}.retrieval.json"
    _write_json(out, {"config": asdict(c), "metrics": metrics, "rows": rows})
    return ConfigMetrics(name=c.name, metrics=metrics, rows_file=str(out), n=len(rows))


def _search(index, mode: str, text: str, qvec, *, top_k: int, prefetch_k: int):
    if mode == "hybrid":
        return index.search(EVAL_TENANT, text, qvec, top_k=top_k, prefetch_k=prefetch_k)
    if mode == "bm25":
        return index._search(EVAL_TENANT, text, None, top_k=top_k, prefetch_k=prefetch_k)
    return index._search(EVAL_TENANT, text, qvec, top_k=top_k, prefetch_k=prefetch_k, keyword=False)


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else 0.0


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "config"


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)  # idempotent: a retry rewrites the same file


# --- answers -------------------------------------------------------------------------------------


@dataclass
class ReadQuestionsInput:
    data: str
    limit: int | None = None


@dataclass
class Questions:
    questions: list[QuestionSpec]


@activity.defn(name="keel.eval_read_questions")
def eval_read_questions(inp: ReadQuestionsInput) -> Questions:
    try:
        return Questions(read_questions(Path(inp.data), inp.limit))
    except (FileNotFoundError, ValueError) as e:
        raise _bad(str(e)) from None


@dataclass
class AnsweredRow:
    """One question's ask, as the evaluation workflow saw it (small: no chunk text)."""

    question: QuestionSpec
    workflow_id: str
    answer: str = ""
    cited_documents: list[str] = field(default_factory=list)
    cited_chunks: list[str] = field(default_factory=list)
    answerable: bool = False
    degraded: bool = False
    cost_usd: float = 0.0
    tokens: int = 0
    attempts: int = 0
    error: str | None = None


@dataclass
class ScoreAnswersInput:
    config: EvalConfig
    out: str
    rows: list[AnsweredRow]
    tenant: str = ""


ANSWER_METRICS = [
    "citation_precision", "citation_recall", "support", "grounded", "facts", "answerable", "degraded",
    "cost_usd", "tokens", "latency_s",
]


def source_matches(cited: str, expected: str) -> bool:
    """A cited document (an ingested absolute path) is the expected source: the same path, the
    same trailing path (``docs/hours.md``), or the same file name."""
    c, e = cited.replace("\\", "/"), expected.replace("\\", "/").lstrip("./")
    return c == expected or c.endswith("/" + e) or Path(c).name == e


def fact_present(fact: str, answer: str) -> bool:
    norm = lambda s: " ".join("".join(ch.lower() if ch.isalnum() else " " for ch in s).split())  # noqa: E731
    return norm(fact) in norm(answer)


def support_ratio(answer: str, source_text: str, question: str) -> float:
    """Share of the answer's content words found in its cited sources or the question: the
    measure of ``keel.llm.prompts.grounding_errors`` (which fails an answer below MIN_SUPPORT)."""
    from keel.llm.prompts import _content_words, _stem

    words = [w for w in _content_words(answer) if not w[0].isdigit()]
    if not words:
        return 1.0
    known = {_stem(w) for w in _content_words(source_text) + _content_words(question)}
    return sum(_stem(w) in known for w in words) / len(words)


async def _ask_record(client, workflow_id: str) -> tuple[Any, Any, float]:
    """From an ask's history: its search result, its scrubbed question and its duration."""
    from keel.types import ScrubbedText, SearchResult as _SR

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    events = list(history.events)
    found = scrubbed = None
    async for kind, payloads in _activity_results(client, events):
        if kind == "keel.hybrid_search" and found is None:
            found = (await client.data_converter.decode(payloads, [_SR]))[0]
        elif kind == "keel.scrub_text" and scrubbed is None:
            scrubbed = (await client.data_converter.decode(payloads, [ScrubbedText]))[0]
    latency = 0.0
    if events:
        latency = events[-1].event_time.ToDatetime().timestamp() - events[0].event_time.ToDatetime().timestamp()
    return found, scrubbed, latency


async def _activity_results(client, events):
    """(activity type, result payloads) of each completed activity, regular and local."""
    scheduled = {}
    for e in events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.HasField("activity_task_completed_event_attributes"):
            a = e.activity_task_completed_event_attributes
            yield scheduled.get(a.scheduled_event_id, ""), list(a.result.payloads)
        elif e.HasField("marker_recorded_event_attributes"):
            m = e.marker_recorded_event_attributes
            if m.marker_name != "core_local_activity" or "result" not in m.details:
                continue
            data_payloads = list(m.details["data"].payloads) if "data" in m.details else []
            # The marker's own data is the SDK's, never sealed: read it without the codec.
            data = client.data_converter.payload_converter.from_payloads(data_payloads, [dict])[0] if data_payloads else {}
            kind = data.get("activity_type", "") if isinstance(data, dict) else ""
            result = list(m.details["result"].payloads)
            if result:
                yield kind, result


@activity.defn(name="keel.eval_score_answers")
async def eval_score_answers(inp: ScoreAnswersInput) -> ConfigMetrics:
    """Citations against the expected sources, support of the answer by what it cites, expected
    facts present, cost and latency, per question; rows to ``<out>/<config>.answers.json``."""
    from keel.llm.prompts import MIN_SUPPORT

    client = runtime().client or activity.client()
    rows = []
    for r in inp.rows:
        q = r.question
        row: dict[str, Any] = {"id": q.id, "question": q.question, "workflow_id": r.workflow_id, "answer": r.answer}
        found, scrubbed, latency = (None, None, 0.0)
        if r.error is None:
            try:
                found, scrubbed, latency = await _ask_record(client, r.workflow_id)
            except Exception as e:  # noqa: BLE001  a run's history gone: score what we have
                activity.logger.warning("no history of %s: %s", r.workflow_id, e)
        cited = list(dict.fromkeys(r.cited_documents))
        good = [c for c in cited if any(source_matches(c, s) for s in q.sources)]
        row["citation_precision"] = len(good) / len(cited) if cited else 0.0
        row["citation_recall"] = (
            sum(any(source_matches(c, s) for c in cited) for s in q.sources) / len(q.sources) if q.sources else 1.0
        )
        texts = [h.text for h in found.hits if h.chunk_id in set(r.cited_chunks)] if found is not None else []
        question_text = scrubbed.text if scrubbed is not None else q.question
        support = support_ratio(r.answer, " ".join(texts), question_text) if r.answerable and texts else 0.0
        row["support"] = round(support, 4)
        row["grounded"] = 1.0 if r.answerable and texts and support >= MIN_SUPPORT else 0.0
        row["facts"] = sum(fact_present(f, r.answer) for f in q.facts) / len(q.facts) if q.facts else 1.0
        row["answerable"] = 1.0 if r.answerable else 0.0
        row["degraded"] = 1.0 if r.degraded else 0.0
        row["cost_usd"] = r.cost_usd
        row["tokens"] = float(r.tokens)
        row["latency_s"] = round(latency, 3)
        row["cited_documents"], row["expected_sources"], row["error"] = cited, q.sources, r.error
        rows.append(row)
    metrics = {m: _mean(row[m] for row in rows) for m in ANSWER_METRICS}
    metrics["cost_usd"] = round(sum(row["cost_usd"] for row in rows), 6)  # total, not mean
    out = Path(inp.out) / f"{_safe(inp.config.name)}.answers.json"
    _write_json(out, {"config": asdict(inp.config), "metrics": metrics, "rows": rows})
    return ConfigMetrics(name=inp.config.name, metrics=metrics, rows_file=str(out), n=len(rows))


# --- report ----------------------------------------------------------------------------------------


@dataclass
class ReportInput:
    out: str
    kind: str
    data: str
    results: list[ConfigMetrics]


@dataclass
class ReportFiles:
    json: str
    csv: str
    summary: str


def metric_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {
        k: round(b[k] - a[k], 6)
        for k in a
        if k in b and isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)) and not isinstance(a[k], bool)
    }


def deltas(configs: dict[str, dict[str, float]]) -> dict:
    """Two configurations: B - A. More: each later one against the first, by name. One: {}."""
    names = list(configs)
    if len(names) < 2:
        return {}
    if len(names) == 2:
        return metric_delta(configs[names[0]], configs[names[1]])
    return {n: metric_delta(configs[names[0]], configs[n]) for n in names[1:]}


@activity.defn(name="keel.eval_report")
def eval_report(inp: ReportInput) -> ReportFiles:
    """Side-by-side per-query rows with deltas: ``per_query.json``, ``per_query.csv``; and
    ``summary.json`` (the configurations' aggregates)."""
    names = [r.name for r in inp.results]
    loaded = {r.name: json.loads(Path(r.rows_file).read_text()) for r in inp.results}
    metric_names = list(loaded[names[0]]["metrics"]) if names else []
    order: list[str] = []
    by_id: dict[str, dict[str, dict]] = defaultdict(dict)
    text: dict[str, str] = {}
    for name in names:
        for row in loaded[name]["rows"]:
            if row["id"] not in by_id:
                order.append(row["id"])
            by_id[row["id"]][name] = row
            text[row["id"]] = row.get("query") or row.get("question", "")
    per_metric = [m for m in metric_names if m != "search_ms"]
    merged = []
    for qid in order:
        entry: dict[str, Any] = {"id": qid, "text": text[qid], "configs": by_id[qid]}
        if len(names) >= 2 and all(n in by_id[qid] for n in names[:2]):
            a, b = by_id[qid][names[0]], by_id[qid][names[1]]
            entry["delta"] = {m: round(b[m] - a[m], 6) for m in per_metric if m in a and m in b}
            if inp.kind == "answers":
                entry["answer_changed"] = a.get("answer") != b.get("answer")
        merged.append(entry)
    out = Path(inp.out)
    _write_json(out / "per_query.json", {"data": inp.data, "kind": inp.kind, "configs": names, "rows": merged})
    header = ["id", "text"] + [f"{m}:{n}" for m in per_metric for n in names]
    if len(names) >= 2:
        header += [f"{m}:delta" for m in per_metric]
    if inp.kind == "answers":
        header += [f"answer:{n}" for n in names]
    tmp = out / "per_query.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for e in merged:
            line = [e["id"], e["text"]]
            line += [e["configs"].get(n, {}).get(m, "") for m in per_metric for n in names]
            if len(names) >= 2:
                line += [e.get("delta", {}).get(m, "") for m in per_metric]
            if inp.kind == "answers":
                line += [e["configs"].get(n, {}).get("answer", "") for n in names]
            w.writerow(line)
    tmp.replace(out / "per_query.csv")
    configs = {r.name: r.metrics for r in inp.results}
    _write_json(out / "summary.json", {"data": inp.data, "kind": inp.kind, "configs": configs, "delta": deltas(configs)})
    return ReportFiles(json=str(out / "per_query.json"), csv=str(out / "per_query.csv"), summary=str(out / "summary.json"))


# --- what-if ---------------------------------------------------------------------------------------


WHATIF_MEMO = "keel.whatif"  # memo key naming the recorded results a what-if run may reuse
WHATIF_TENANT_MEMO = "keel.whatif.tenant"


@dataclass
class WhatIfRecordInput:
    workflow_id: str
    run_id: str | None = None
    sets: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedSummary:
    """What the recorded ask answered, for the deltas."""

    answer: str
    citations: list[str]  # chunk ids
    documents: list[str]
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    model: str
    degraded: bool


@dataclass
class WhatIfRecorded:
    key: str  # blob holding {"type|input hash": recorded result payload}
    tenant: str
    ask: AskInput  # with the changes applied
    original: RecordedSummary
    recorded: int  # activity results recorded
    changed: dict[str, str]  # setting -> "old -> new"


SETTABLE = {
    "top_k": "retrieval.top_k", "prefetch_k": "retrieval.prefetch_k", "min_relevance": "retrieval.min_relevance",
    "prompt_version": "prompt_version", "max_cost_usd": "max_cost_usd", "use_cache": "use_cache",
    "source": "filters.source", "tags": "filters.tags", "since": "filters.date_from", "until": "filters.date_to",
    "document_id": "filters.document_id",
}


def apply_sets(ask, sets: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """A copy of an ``AskInput`` with ``--set NAME=VALUE`` changes applied (validated)."""
    import copy

    from keel.llm.prompts import PROMPTS
    from keel.types import Filters, RetrievalSettings

    new = copy.deepcopy(ask)
    changed = {}
    for name, raw in sets.items():
        if name in ("model", "llm_model", "provider"):
            raise ValueError(f"--set {name}: {NOT_PER_RUN[name]}; AskInput has no such field")
        if name not in SETTABLE:
            raise ValueError(f"--set {name}: unknown setting; allowed: {', '.join(SETTABLE)}")
        r = new.retrieval
        if name in ("top_k", "prefetch_k", "min_relevance"):
            old = getattr(r, name)
            value = float(raw) if name == "min_relevance" else int(raw)
            values = {"top_k": r.top_k, "prefetch_k": r.prefetch_k, "min_relevance": r.min_relevance, name: value}
            if name == "top_k" and "prefetch_k" not in sets:
                values["prefetch_k"] = max(r.prefetch_k, value)
            new.retrieval = RetrievalSettings(**values, fusion=r.fusion)
        elif name == "prompt_version":
            if raw not in PROMPTS:
                raise ValueError(f"--set prompt_version: unknown {raw!r}; allowed: {', '.join(PROMPTS)}")
            old, new.prompt_version = new.prompt_version, raw
        elif name == "max_cost_usd":
            old, new.max_cost_usd = new.max_cost_usd, (None if raw in ("", "none", "None") else float(raw))
        elif name == "use_cache":
            old, new.use_cache = new.use_cache, raw.lower() in ("1", "true", "yes", "on")
        else:
            f = new.filters or Filters()
            attr = SETTABLE[name].split(".", 1)[1]
            old = getattr(f, attr)
            value: Any = [t for t in raw.split(",") if t] if name == "tags" else (raw or None)
            values = {k: getattr(f, k) for k in ("source", "document_id", "tags", "date_from", "date_to")}
            values[attr] = value
            nf = Filters(**values)
            new.filters = nf if any([nf.source, nf.document_id, nf.tags, nf.date_from, nf.date_to]) else None
        changed[name] = f"{old} -> {raw}"
    return new, changed


def input_hash(payloads) -> str:
    """Of an activity's input payloads (as the payload converter writes them, before the codec)."""
    h = hashlib.sha256()
    for p in payloads:
        for k in sorted(p.metadata):
            h.update(k.encode() + b"=" + p.metadata[k] + b";")
        h.update(len(p.data).to_bytes(8, "big") + p.data)
    return h.hexdigest()


def encode_payload(payload) -> str:
    return base64.b64encode(payload.SerializeToString(deterministic=True)).decode()


@activity.defn(name="keel.whatif_record")
async def whatif_record(inp: WhatIfRecordInput) -> WhatIfRecorded:
    """Replay a recorded ask to learn each of its activities' (type, input) → result; store that
    map as a blob sealed for the run's tenant; return the ask's input with the changes applied."""
    from temporalio.worker import Replayer

    from keel.errors import KeelError
    from keel.workflows.evaluate import Recorder, recordings
    from keel.workflows.answer import AnswerQuestion

    client = runtime().client or activity.client()
    handle = client.get_workflow_handle(inp.workflow_id, run_id=inp.run_id)
    history = await handle.fetch_history()
    events = list(history.events)
    if not events or events[0].workflow_execution_started_event_attributes.workflow_type.name != "AnswerQuestion":
        raise _bad(f"{inp.workflow_id} is not an ask (AnswerQuestion) run")
    started = events[0].workflow_execution_started_event_attributes
    ask: AskInput = (await client.data_converter.decode(list(started.input.payloads), [AskInput]))[0]
    completed = [e for e in events if e.HasField("workflow_execution_completed_event_attributes")]
    if not completed:
        raise _bad(f"{inp.workflow_id} has not completed: only a finished ask can be re-run")
    result: AskResult = (
        await client.data_converter.decode(list(completed[-1].workflow_execution_completed_event_attributes.result.payloads), [AskResult])
    )[0]
    try:
        new, changed = apply_sets(ask, inp.sets)
    except ValueError as e:
        raise _bad(str(e)) from None
    replayer = Replayer(
        workflows=[AnswerQuestion], interceptors=[Recorder()], data_converter=client.data_converter,
        workflow_failure_exception_types=[KeelError],
    )
    outcome = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    recorded = recordings.pop(inp.workflow_id, {})
    if outcome.replay_failure is not None and not recorded:
        raise ApplicationError(f"could not replay {inp.workflow_id}: {outcome.replay_failure}", non_retryable=True)
    key = runtime().blobs.put_json({"workflow_id": inp.workflow_id, "results": recorded}, tenant=ask.tenant)
    original = RecordedSummary(
        answer=result.answer, citations=[c.chunk_id for c in result.citations], documents=[c.document for c in result.citations],
        cost_usd=result.cost_usd, prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
        attempts=result.attempts, model=result.model, degraded=result.degraded,
    )
    return WhatIfRecorded(key=key, tenant=ask.tenant, ask=new, original=original, recorded=len(recorded), changed=changed)


@dataclass
class LookupInput:
    key: str
    tenant: str
    activity_type: str
    input_hash: str


@dataclass
class Lookup:
    found: bool
    payload: str = ""  # base64 of the recorded result's Payload
    activity_type: str = ""


@activity.defn(name="keel.whatif_lookup")
def whatif_lookup(inp: LookupInput) -> Lookup:
    """The recorded result of an activity with this type and input, if the recorded run had one."""
    data = runtime().once(f"whatif:{inp.key}", lambda: runtime().blobs.get_json(inp.key, tenant=inp.tenant))
    payload = data["results"].get(f"{inp.activity_type}|{inp.input_hash}")
    return Lookup(found=payload is not None, payload=payload or "", activity_type=inp.activity_type)


@dataclass
class StepCountInput:
    workflow_id: str


@dataclass
class StepCounts:
    reused: dict[str, int]  # activity type -> results served from the recording
    executed: dict[str, int]  # activity type -> activities that ran (regular and local)


@activity.defn(name="keel.whatif_step_counts")
async def whatif_step_counts(inp: StepCountInput) -> StepCounts:
    """From a what-if run's history: which steps were reused and which ran."""
    client = runtime().client or activity.client()
    events = list((await client.get_workflow_handle(inp.workflow_id).fetch_history()).events)
    reused: dict[str, int] = defaultdict(int)
    executed: dict[str, int] = defaultdict(int)
    async for kind, payloads in _activity_results(client, events):
        if kind == "keel.whatif_lookup":
            found = (await client.data_converter.decode(payloads, [Lookup]))[0]
            if found.found:
                reused[found.activity_type] += 1
            continue
        executed[kind] += 1
    return StepCounts(reused=dict(reused), executed=dict(executed))


EVAL_ACTIVITIES = [
    eval_inspect, eval_build_index, eval_retrieval, eval_read_questions, eval_score_answers, eval_report,
    whatif_record, whatif_lookup, whatif_step_counts,
]

# At the end: keel.workflows imports keel.workflows.evaluate, which imports this module.
from keel.workflows.answer import AskInput, AskResult  # noqa: E402
