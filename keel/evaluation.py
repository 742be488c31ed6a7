"""Evaluations as workflows and what-if re-runs (issue 13).

    keel eval --data DIR|FILE.jsonl [--config A.toml --config B.toml] [--tenant T] [--out DIR]
              [--limit N] [--split train]
    keel whatif WORKFLOW_ID --set top_k=12 [--set prompt_version=answer-v1] [--run-id R] [--json]

``keel eval`` runs ``EvaluateRun`` (``keel.workflows.evaluate``) and prints one JSON line:
``{"data", "kind", "configs": {NAME: metrics}, "delta": {metric: B - A}, "n_queries", "out",
"files", "workflow_id"}``; per-query rows are under ``out`` (``per_query.json``,
``per_query.csv``, ``summary.json`` and one file per configuration).

A configuration file is TOML with any of (flat, or under ``[eval]``): ``name``, ``top_k``,
``prefetch_k``, ``min_relevance``, ``retrieval_mode`` (hybrid | dense | bm25),
``chunk_max_tokens``, ``chunk_overlap_tokens``, ``embedding_model``, ``prompt_version``,
``max_cost_usd``, ``use_cache``. Unset keys take the deployment's defaults (KeelSettings).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keel eval`` and ``keel whatif`` to the CLI's subcommands."""
    p = sub.add_parser("eval", help="evaluate retrieval or answers on a data set, one or two configurations side by side")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    w = sub.add_parser("whatif", help="re-run a recorded ask with a setting changed, reusing unchanged steps")
    w.add_argument("workflow_id", help="the recorded ask (keel ask --json prints its workflow_id)")
    w.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE", required=True,
                   help="top_k, prefetch_k, min_relevance, prompt_version, max_cost_usd, use_cache, source, tags, since, until, document_id")
    w.add_argument("--run-id", default=None, help="a run of WORKFLOW_ID other than its latest")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_whatif)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a JSONL of questions")
    p.add_argument("--config", action="append", default=[], metavar="FILE.toml", help="a configuration (repeat for side by side)")
    p.add_argument("--tenant", default="", help="answers: the tenant whose documents answer")
    p.add_argument("--out", default=None, help="folder for the per-query files (default .keel/evals/<run id>/)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N queries / questions")
    p.add_argument("--split", default="train", help="BEIR qrels split (qrels/<split>.tsv)")


def config_defaults(settings) -> dict:
    return {
        "top_k": settings.top_k, "prefetch_k": settings.prefetch_k, "min_relevance": settings.min_relevance,
        "chunk_max_tokens": settings.chunk_max_tokens, "chunk_overlap_tokens": settings.chunk_overlap_tokens,
        "embedding_model": settings.embedding_model, "prompt_version": settings.prompt_version,
    }


def load_configs(paths: list[str], settings) -> list:
    """The configurations named on the command line (their TOML read now, so a scheduled eval
    keeps the settings it was created with); none: one ``default`` configuration."""
    from keel.activities.evaluate import EvalConfig, config_from_toml

    defaults = config_defaults(settings)
    if not paths:
        return [EvalConfig(name="default", **defaults)]
    configs, names = [], set()
    for path in paths:
        p = Path(path)
        c = config_from_toml(p.read_text(encoding="utf-8"), name=p.stem, defaults=defaults, source=str(p.resolve()))
        base, n = c.name, 2
        while c.name in names:
            c.name, n = f"{base}-{n}", n + 1
        names.add(c.name)
        configs.append(c)
    return configs


def eval_input(args, settings):
    from keel.workflows.evaluate import EvalInput

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    data = Path(args.data).resolve()
    if not data.exists():
        raise FileNotFoundError(f"{args.data}: no such file or folder")
    return EvalInput(
        data=str(data), configs=load_configs(args.config, settings), tenant=args.tenant,
        out=str(Path(args.out).resolve()) if args.out else None, limit=args.limit, split=args.split,
    )


def schedule_action_args(argv: list[str], settings):
    """``(EvaluateRun.run, EvalInput, task_queue)`` for the arguments of ``keel eval`` (with or
    without the leading ``eval``): what ``keel schedule add NAME --cron EXPR eval ...`` starts.
    Configuration files are read now; the output folder defaults to the scheduled run's id."""
    from keel.workflows.evaluate import EvaluateRun

    argv = list(argv)
    if argv and argv[0] == "eval":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="keel eval", add_help=False)
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    return EvaluateRun.run, eval_input(args, settings), settings.task_queue


def eval_json(result, workflow_id: str) -> dict:
    return {
        "data": result.data, "kind": result.kind, "configs": result.configs, "delta": result.delta,
        "n_queries": result.n_queries, "out": result.out, "files": result.files, "workflow_id": workflow_id,
    }


async def cmd_eval(args, settings) -> int:
    from keel.cli import _client
    from keel.workflows.evaluate import EvaluateRun

    try:
        inp = eval_input(args, settings)
    except (OSError, ValueError) as e:
        print(f"keel eval: {e}", file=sys.stderr)
        return 2
    client = await _client(settings)
    workflow_id = f"eval-{uuid.uuid4().hex[:12]}"
    print(f"Evaluating {inp.data} ({', '.join(c.name for c in inp.configs)}): {settings.run_ui_url(workflow_id)}", file=sys.stderr)
    result = await client.execute_workflow(EvaluateRun.run, inp, id=workflow_id, task_queue=settings.task_queue)
    print(json.dumps(eval_json(result, workflow_id)))
    return 0


def parse_sets(items: list[str]) -> dict[str, str]:
    sets = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        sets[name.strip()] = value.strip()
    return sets


def whatif_json(result) -> dict:
    return {
        "workflow_id": result.workflow_id, "original_workflow_id": result.original_workflow_id,
        "changed": result.changed, "original": asdict(result.original), "rerun": asdict(result.rerun),
        "delta": result.delta, "recorded": result.recorded, "reused": result.reused, "executed": result.executed,
    }


async def cmd_whatif(args, settings) -> int:
    from keel.activities.evaluate import SETTABLE
    from keel.cli import _client
    from keel.workflows.evaluate import WhatIfAsk, WhatIfInput

    try:
        sets = parse_sets(args.sets)
        unknown = [s for s in sets if s not in SETTABLE]
        if unknown:
            raise ValueError(f"--set {unknown[0]}: unknown setting; allowed: {', '.join(SETTABLE)}")
    except ValueError as e:
        print(f"keel whatif: {e}", file=sys.stderr)
        return 2
    client = await _client(settings)
    workflow_id = f"whatif-{uuid.uuid4().hex[:12]}"
    result = await client.execute_workflow(
        WhatIfAsk.run, WhatIfInput(args.workflow_id, sets, args.run_id), id=workflow_id, task_queue=settings.task_queue
    )
    out = {"whatif_workflow_id": workflow_id, **whatif_json(result), "ui_url": settings.run_ui_url(result.workflow_id)}
    if args.json:
        print(json.dumps(out))
        return 0
    o, r, d = result.original, result.rerun, result.delta
    print(f"what-if of {result.original_workflow_id}: {', '.join(f'{k} {v}' for k, v in result.changed.items())}")
    print(f"  before: {o.answer}")
    print(f"  after:  {r.answer}" + ("" if d["answer_changed"] else "   (unchanged)"))
    if d["citations_added"] or d["citations_removed"]:
        print(f"  citations: +{len(d['citations_added'])} -{len(d['citations_removed'])}")
    print(f"  cost: ${o.cost_usd:.6f} -> ${r.cost_usd:.6f}; tokens {o.prompt_tokens + o.completion_tokens} -> "
          f"{r.prompt_tokens + r.completion_tokens}")
    print(f"  steps reused: {sum(result.reused.values())} {result.reused}; ran: {result.executed}")
    print(f"  run: {out['ui_url']}")
    return 0
