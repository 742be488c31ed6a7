"""Evaluations as workflows (``keel eval``) and what-if re-runs (``keel whatif``), on the real
dev server, the real embedding model and the fake LLM (issue 13, items 7-8).

The evaluation and what-if workflows run on a worker in this process (its own task queue), with
Keel's plugin, plus the evaluation activities and the what-if interceptor if the plugin does not
register them yet; the recorded asks run on the ``keel`` deployment's workers as ``keel ask``'s do.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from keel.activities.evaluate import EVAL_ACTIVITIES, fact_present, source_matches
from keel.evaluation import cmd_eval, eval_input
from keel.plugin import KeelPlugin, keel_activities
from keel.workflows.evaluate import EvaluateRun, WhatIfAsk, WhatIfInput, WhatIfInterceptor

from tests.conftest import CORPUS, SHARED_DATA, KeelEnv

SCIFACT = SHARED_DATA / "scifact"


@pytest.fixture(scope="module")
async def evalq(keel: KeelEnv):
    """(settings, client) of a worker in this process that runs the evaluation workflows."""
    s = keel.settings.model_copy(update={"task_queue": f"{keel.settings.task_queue}-eval"})
    plugin = KeelPlugin(s, index=False)
    client = await Client.connect(s.temporal_address, plugins=[plugin])
    registered = {a.__temporal_activity_definition.name for a in keel_activities()}
    extra = [a for a in EVAL_ACTIVITIES if a.__temporal_activity_definition.name not in registered]
    has_interceptor = any(isinstance(i, WhatIfInterceptor) for i in plugin.interceptors or [])
    worker = Worker(client, task_queue=s.task_queue, activities=extra, interceptors=[] if has_interceptor else [WhatIfInterceptor()])
    async with worker:
        yield s, client


@pytest.fixture(scope="module")
async def small_corpus(keel: KeelEnv, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval-corpus")
    for name in ("visiting_hours.txt", "membership.md"):
        shutil.copy(CORPUS / name, folder / name)
    summary = await keel.ingest([folder], tenant="evalt")
    assert summary.failed == 0, summary.failures
    return folder


def small_beir(folder: Path, n_queries: int = 8, n_docs: int = 30) -> Path:
    """A BEIR folder sampled from SciFact at test time: n_queries judged queries, their relevant
    documents, and other documents up to n_docs."""
    qrels = [r.rstrip("\n").split("\t") for r in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:] if r.strip()]
    queries = {q["_id"]: q for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines()) if q}
    chosen = list(dict.fromkeys(r[0] for r in qrels))[:n_queries]
    rows = [r for r in qrels if r[0] in chosen]
    needed = {r[1] for r in rows}
    corpus = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines() if line.strip()]
    others = [d for d in corpus if d["_id"] not in needed]
    random.Random(13).shuffle(others)
    docs = [d for d in corpus if d["_id"] in needed] + others[: max(0, n_docs - len(needed))]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(queries[q]) + "\n" for q in chosen))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    return folder


def eval_args(data: Path, configs: list[Path], out: Path, tenant: str = "", limit: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(data=str(data), config=[str(c) for c in configs], tenant=tenant, out=str(out), limit=limit, split="train")


async def run_cli(capsys, args, settings) -> dict:
    assert await cmd_eval(args, settings) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # exactly one JSON line
    return json.loads(lines[0])


async def test_retrieval_eval_two_configs_side_by_side(evalq, tmp_path, capsys):
    settings, _ = evalq
    data = small_beir(tmp_path / "beir")
    (tmp_path / "A.toml").write_text("top_k = 5\n")
    (tmp_path / "B.toml").write_text('top_k = 10\nretrieval_mode = "bm25"\n')
    out = await run_cli(capsys, eval_args(data, [tmp_path / "A.toml", tmp_path / "B.toml"], tmp_path / "out"), settings)
    assert out["kind"] == "retrieval" and out["n_queries"] == 8 and set(out["configs"]) == {"A", "B"}
    a, b = out["configs"]["A"], out["configs"]["B"]
    for m in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "context_recall"):
        assert 0.0 <= a[m] <= 1.0 and 0.0 <= b[m] <= 1.0
        assert out["delta"][m] == pytest.approx(b[m] - a[m], abs=1e-6)
    assert a["ndcg@10"] > 0.3  # 30 documents, every relevant one among them: the search finds them
    assert a["recall@100"] == 1.0  # fewer than 100 documents
    # Per-query rows are files under --out, side by side, with deltas.
    rows = list(csv.DictReader((tmp_path / "out" / "per_query.csv").open()))
    assert len(rows) == 8 and {"ndcg@10:A", "ndcg@10:B", "ndcg@10:delta"} <= set(rows[0])
    per_query = json.loads((tmp_path / "out" / "per_query.json").read_text())["rows"]
    assert set(per_query[0]["configs"]) == {"A", "B"} and "delta" in per_query[0]
    mean = sum(r["configs"]["A"]["ndcg@10"] for r in per_query) / 8
    assert mean == pytest.approx(a["ndcg@10"], abs=1e-4)

    # A search-time change reuses the index (built once for A and B, and again here).
    (tmp_path / "C.toml").write_text("prefetch_k = 60\n")
    again = await run_cli(capsys, eval_args(data, [tmp_path / "A.toml", tmp_path / "C.toml"], tmp_path / "out2", limit=3), settings)
    assert again["n_queries"] == 3 and set(again["configs"]) == {"A", "C"}


async def test_answer_eval_scores_citations_support_and_facts(evalq, small_corpus, tmp_path, capsys, fake_llm):
    settings, _ = evalq
    questions = tmp_path / "questions.jsonl"
    qs = [
        {"question": "How much does a family membership cost?", "facts": ["Membership Tiers"], "sources": ["membership.md"]},
        {"question": "What are the visiting hours in the main season?", "facts": ["VISITING HOURS"], "sources": ["visiting_hours.txt"]},
    ]
    questions.write_text("".join(json.dumps(q) + "\n" for q in qs))
    (tmp_path / "A.toml").write_text('name = "v2"\nprompt_version = "answer-v2"\n')
    (tmp_path / "B.toml").write_text('name = "v1-top3"\nprompt_version = "answer-v1"\ntop_k = 3\n')
    args = eval_args(questions, [tmp_path / "A.toml", tmp_path / "B.toml"], tmp_path / "out", tenant="evalt")
    before = len(fake_llm.requests)
    inp = eval_input(args, settings)
    inp.ask_task_queue = settings.task_queue  # the asks run on the evaluation worker's queue (it has the plugin)
    _, client = evalq
    result = await client.execute_workflow(EvaluateRun.run, inp, id=f"test-eval-answers-{tmp_path.name}", task_queue=settings.task_queue)
    assert result.kind == "answers" and result.n_queries == 2 and set(result.configs) == {"v2", "v1-top3"}
    answered = json.loads(Path(result.files[1]).read_text())["rows"]
    v2 = {r["id"]: r["configs"]["v2"] for r in answered}
    # The fake LLM answers with the first words of S1 and cites S1: the top hit.
    assert v2["1"]["citation_precision"] == 1.0 and v2["1"]["citation_recall"] == 1.0
    assert v2["1"]["support"] >= 0.6 and v2["1"]["grounded"] == 1.0
    assert v2["2"]["citation_recall"] == 1.0
    for m in ("citation_precision", "citation_recall", "support", "facts", "cost_usd", "latency_s"):
        assert m in result.configs["v2"] and m in result.delta
    assert result.configs["v2"]["latency_s"] > 0
    # At most the answer and one repair per answerable ask (the fake's answer, a chunk's first 30
    # words, lists figures from lines other than the best passage: refused since 0.6, then repaired).
    assert len(fake_llm.requests) - before <= 8
    assert (Path(result.out) / "per_query.csv").exists()


def test_schedule_action_args_parses_keel_eval_arguments(tmp_path):
    from keel.config import KeelSettings
    from keel.evaluation import schedule_action_args
    from keel.workflows.evaluate import EvaluateRun

    (tmp_path / "B.toml").write_text('[eval]\nname = "deep"\ntop_k = 12\nprefetch_k = 60\n')
    run, inp, queue = schedule_action_args(["eval", "--data", str(SCIFACT), "--config", str(tmp_path / "B.toml"), "--limit", "50"], KeelSettings(task_queue="q"))
    assert run is EvaluateRun.run and queue == "q" and inp.limit == 50 and inp.out is None
    assert [(c.name, c.top_k, c.prefetch_k, c.chunk_max_tokens) for c in inp.configs] == [("deep", 12, 60, 180)]
    (tmp_path / "bad.toml").write_text('llm_model = "gpt-4o"\n')
    with pytest.raises(ValueError, match="not a run input"):
        schedule_action_args(["--data", str(SCIFACT), "--config", str(tmp_path / "bad.toml")], KeelSettings())


def test_answer_metric_helpers():
    assert source_matches("/data/corpus/membership.md", "membership.md")
    assert source_matches("/data/corpus/docs/a.md", "docs/a.md") and not source_matches("/data/b.md", "a.md")
    assert fact_present("$75 per year", "The family membership costs $75 per year.")
    assert not fact_present("$45", "It costs $75.")


async def test_whatif_prompt_change_pays_one_llm_call_and_no_search(keel: KeelEnv, evalq, small_corpus, fake_llm):
    settings, client = evalq
    original, handle = await keel.ask("How much does a family membership cost?", tenant="evalt")
    assert original.answerable and original.attempts == 1 and original.settings.prompt_version == "answer-v3"
    before = len(fake_llm.requests)
    result = await client.execute_workflow(
        WhatIfAsk.run,
        WhatIfInput(handle.id, {"prompt_version": "answer-v1"}, task_queue=settings.task_queue),
        id=keel.workflow_id("whatif"),
        task_queue=settings.task_queue,
    )
    assert len(fake_llm.requests) - before == 1  # exactly one new LLM call, counted at the fake
    assert "Cite the sources you used." in json.dumps(fake_llm.requests[-1]["messages"])
    assert result.changed == {"prompt_version": "answer-v3 -> answer-v1"}
    assert result.executed.get("keel.llm_request") == 1
    assert not {"keel.hybrid_search", "keel.embed", "keel.scrub_text", "keel.passage_similarity"} & set(result.executed)
    assert result.reused.get("keel.hybrid_search") == 1 and result.reused.get("keel.scrub_text") == 1
    assert result.reused.get("keel.passage_similarity") == 1  # the passages are not embedded again
    # The re-run's own history: no search or embedding activity, scheduled or local.
    history = await client.get_workflow_handle(result.workflow_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert "keel.hybrid_search" not in scheduled and "keel.embed" not in scheduled
    assert scheduled.count("keel.llm_request") == 1
    assert result.rerun.citations and result.delta["answer_changed"] in (True, False)
    assert result.delta["cost_usd"] == pytest.approx(result.rerun.cost_usd - result.original.cost_usd)


async def test_whatif_top_k_change_reuses_the_query_embedding(keel: KeelEnv, evalq, small_corpus, fake_llm):
    settings, client = evalq
    _, handle = await keel.ask("How much does a student membership cost?", tenant="evalt")
    result = await client.execute_workflow(
        WhatIfAsk.run,
        WhatIfInput(handle.id, {"top_k": "3"}, task_queue=settings.task_queue),
        id=keel.workflow_id("whatif"),
        task_queue=settings.task_queue,
    )
    assert result.changed == {"top_k": "5 -> 3"}, result.changed
    assert result.reused.get("keel.embed_query") == 1 and "keel.embed_query" not in result.executed
    assert result.executed.get("keel.hybrid_search") == 1  # the search itself runs again, with the recorded vector
    assert len(result.rerun.citations) <= 3
