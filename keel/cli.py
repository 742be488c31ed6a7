"""``keel``: run the local stack, ingest documents, ask questions.

    keel up [--workers N] [--app MODULE]...   start Temporal dev server, local LLM and N workers
                                              (that also run MODULE's workflows and activities)
    keel down | keel status [--json]
    keel ingest PATH... --tenant T [--tag TAG]... [--date YYYY-MM-DD] [--allow PRINCIPAL]...
                [--no-wait] [--json]
    keel ask "QUESTION" --tenant T [--source PATH] [--tag TAG]... [--since D] [--until D] [--json]
             [--no-cache] [--max-cost USD] [--as USER] [--group G]... [--judge]
    keel stats --tenant T [--json]
    keel permissions PATH... --tenant T (--allow PRINCIPAL... | --everyone) [--json]
    keel approvals [--tenant T] [--json]                  pending human approvals
    keel approve RUN_ID [--comment TEXT] [--approval ID] [--as USER]
    keel reject RUN_ID --reason TEXT [--approval ID] [--as USER]
    keel tenant create T | rotate T | rotate-master | list | credential T --out FILE
    keel tenant forget T [--json]                         erase a tenant (crypto-shredding)
    keel codec-token add NAME --role viewer|auditor --tenant T... | list | revoke NAME
    keel gc [--older-than-days N]                        delete blobs unused for N days
    keel runs --failed | redrive | replay ID | schedule ...   operations (keel/ops.py)
    keel eval --data DIR [--config A.toml]... | whatif ID --set K=V    evaluations (keel/evaluation.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

from keel.offline import configure_offline

configure_offline()

from keel.config import KeelSettings  # noqa: E402


async def _client(settings: KeelSettings):
    from temporalio.client import Client

    from keel.plugin import KeelPlugin

    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)])


def _short_id() -> str:
    return uuid.uuid4().hex[:12]


def _display_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


# --- commands --------------------------------------------------------------------------------


def cmd_up(args, settings: KeelSettings) -> int:
    from keel.stack import Stack

    Stack(settings).up(workers=args.workers, apps=args.app)
    print(f"Temporal Web UI: {settings.ui_url}")
    return 0


def cmd_down(args, settings: KeelSettings) -> int:
    from keel.stack import Stack

    Stack(settings).down()
    return 0


def cmd_status(args, settings: KeelSettings) -> int:
    from keel.stack import Stack

    stack = Stack(settings)
    if args.json:
        print(json.dumps(stack.status()))
        return 0
    running = stack.running()
    if not running:
        print("nothing started by keel is running")
    for p in running:
        print(f"{p.role:9} pid {p.pid:<8} {' '.join(p.cmd[-3:])}  log {p.log}")
    print(f"Temporal Web UI: {settings.ui_url}")
    if stack.codec_url():
        print(f"Codec server: {stack.codec_url()}")
    return 0


def cmd_codec_token(args, settings: KeelSettings) -> int:
    from keel.codec_server import add_token, list_tokens, revoke_token

    if args.action == "add":
        try:
            print(add_token(settings, args.name, args.role, args.tenant))  # shown this once only
        except ValueError as e:
            print(f"keel codec-token: {e}", file=sys.stderr)
            return 2
    elif args.action == "list":
        rows = list_tokens(settings)
        print(json.dumps(rows) if args.json else "\n".join(f"{r['name']:20} {r['role']:8} {','.join(r['tenants'])}" for r in rows))
    elif not revoke_token(settings, args.name):
        print(f"no codec token named {args.name!r}", file=sys.stderr)
        return 1
    return 0


async def cmd_ingest(args, settings: KeelSettings) -> int:
    from keel.workflows.ingest import IngestCorpus

    client = await _client(settings)
    workflow_id = f"ingest-{args.tenant}-{_short_id()}"
    ingest_input = settings.ingest_input(args.tenant, [str(Path(p).resolve()) for p in args.paths], tags=args.tag, date=args.date)
    ingest_input.readers = args.allow
    handle = await client.start_workflow(
        IngestCorpus.run,
        ingest_input,
        id=workflow_id,
        task_queue=settings.task_queue,
    )
    url = settings.run_ui_url(workflow_id)
    if args.no_wait:
        print(json.dumps({"workflow_id": workflow_id, "ui_url": url}) if args.json else workflow_id)
        return 0
    if not args.json:
        print(f"Ingesting into tenant {args.tenant!r}: {url}", file=sys.stderr)
    summary = await _wait_with_progress(handle, show=not args.json)
    if args.json:
        print(json.dumps({"workflow_id": workflow_id, "ui_url": url, **asdict(summary)}))
        return 0
    print(
        f"{summary.indexed} indexed, {summary.unchanged} unchanged, {summary.failed} failed "
        f"({summary.chunks} chunks) of {summary.total} documents"
    )
    for f in summary.failures:
        print(f"  FAILED {_display_path(f.path)}: {f.error_type}: {f.message}")
    return 0


async def _wait_with_progress(handle, *, show: bool):
    from tqdm import tqdm

    from keel.workflows.ingest import IngestCorpus

    result = asyncio.ensure_future(handle.result())
    bar = tqdm(total=0, unit="doc", disable=not show, file=sys.stderr)
    try:
        while not result.done():
            try:
                progress = await handle.query(IngestCorpus.progress)
                bar.total = progress.total
                bar.n = progress.done
                bar.set_postfix(failed=progress.failed, refresh=False)
                bar.refresh()
            except Exception:  # not started yet, or between continue-as-new runs
                pass
            await asyncio.wait([result], timeout=0.5)
        summary = result.result()
        bar.total, bar.n = summary.total, summary.done
        bar.refresh()
        return summary
    finally:
        bar.close()


async def cmd_ask(args, settings: KeelSettings) -> int:
    from keel.types import Filters
    from keel.workflows.answer import AnswerQuestion

    client = await _client(settings)
    workflow_id = f"ask-{args.tenant}-{_short_id()}"
    filters = None
    if args.source or args.tag or args.since or args.until:
        source = str(Path(args.source).resolve()) if args.source else None  # ingest stores absolute paths
        filters = Filters(source=source, tags=args.tag or [], date_from=args.since, date_to=args.until)
    ask_input = settings.ask_input(args.tenant, args.question, filters=filters)
    ask_input.use_cache, ask_input.max_cost_usd = not args.no_cache, args.max_cost
    ask_input.stream = args.stream
    ask_input.principal, ask_input.groups = args.principal, args.group
    ask_input.judge = ask_input.judge or args.judge
    # On the index owner's queue the search is a local activity: one task-queue hop less.
    handle = await client.start_workflow(AnswerQuestion.run, ask_input, id=workflow_id, task_queue=settings.index_task_queue)
    if args.stream and not args.json:
        await _print_stream(client, workflow_id, args.question)
    result = await handle.result()
    url = settings.run_ui_url(workflow_id, handle.result_run_id)
    out = {
        "question": args.question,
        "answer": result.answer,
        "citations": [asdict(c) for c in result.citations],
        "degraded": result.degraded,
        "degraded_reason": result.degraded_reason,
        "answerable": result.answerable,
        "workflow_id": workflow_id,
        "run_id": handle.result_run_id,
        "ui_url": url,
        "usage": asdict(result.usage),
        "model": result.model,
        "attempts": result.attempts,
        "pii_counts": result.pii_counts,
        "settings": asdict(result.settings),
        "provider": result.provider,
        "provider_attempts": [asdict(a) for a in result.provider_attempts],
        "cost_usd": result.cost_usd,
        "cache": result.cache,
        "decisions": [asdict(d) for d in result.decisions],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    if not args.stream:  # a streamed ask printed its question already
        print(f"Q: {args.question}")
    print(f"A: {result.answer}" + ("   [degraded: extractive fallback]" if result.degraded else ""))
    for c in result.citations:
        print(f"   - {_display_path(c.document)} (score {c.score:.2f}, chunk {c.chunk_id})")
    if result.answerable:
        print(f"   {_llm_summary(result)}")
    print(f"   run: {url}")
    return 0


async def _print_stream(client, workflow_id: str, question: str) -> None:
    """The answer as the model writes it; a marker where an attempt's text is discarded."""
    from keel.streaming import follow

    print(f"Q: {question}\n…  ", end="", flush=True)
    async for shown in follow(client, workflow_id):
        if shown.marker:
            print(f"\n   {shown.marker}\n…  ", end="", flush=True)
        else:
            print(shown.text, end="", flush=True)
    print("\n", flush=True)


def _llm_summary(result) -> str:
    """One line: who answered (or the cache), tokens and cost of every attempt, decisions."""
    tokens = result.usage.prompt_tokens + result.usage.completion_tokens
    who = f"cache ({result.cache}) of {result.provider}" if result.cache else (result.provider or "no provider")
    tried = [a for a in result.provider_attempts if a.provider != result.provider or a.outcome.value != "answered"]
    line = f"llm: {who}, {result.model or '-'}, {tokens} tokens, ${result.cost_usd:.6f}"
    if tried:
        others = ", ".join(f"{a.provider} {a.error_type or a.outcome.value}" for a in tried)
        line += f", {len(tried)} other attempt(s): {others}"
    for d in result.decisions:
        line += f"\n   policy: {d.detail}"
    return line


async def cmd_stats(args, settings: KeelSettings) -> int:
    from keel.workflows.stats import IndexStats, IndexStatsInput

    client = await _client(settings)
    stats = await client.execute_workflow(
        IndexStats.run,
        IndexStatsInput(tenant=args.tenant),
        id=f"stats-{args.tenant}-{_short_id()}",
        task_queue=settings.task_queue,
    )
    print(json.dumps(asdict(stats)) if args.json else f"{stats.documents} documents, {stats.chunks} chunks")
    return 0


async def cmd_permissions(args, settings: KeelSettings) -> int:
    from keel.activities.ingest import document_id
    from keel.workflows.permissions import SetReaders, SetReadersInput

    if bool(args.allow) == args.everyone:
        print("keel permissions: give --allow PRINCIPAL (repeatable) or --everyone", file=sys.stderr)
        return 2
    paths = [str(Path(p).resolve()) for p in args.paths]
    client = await _client(settings)
    out = await client.execute_workflow(
        SetReaders.run,
        SetReadersInput(args.tenant, [document_id(args.tenant, p) for p in paths], list(args.allow)),
        id=f"permissions-{args.tenant}-{_short_id()}",
        task_queue=settings.task_queue,
    )
    rows = [{"path": p, "chunks": n, "readers": out.readers} for p, n in zip(paths, out.chunks)]
    if args.json:
        print(json.dumps(rows))
    for r in rows if not args.json else []:
        who = ", ".join(r["readers"]) or f"everyone in {args.tenant}"
        print(f"{_display_path(r['path'])}: " + (f"{r['chunks']} chunks readable by {who}" if r["chunks"] else "not indexed"))
    return 0 if all(r["chunks"] for r in rows) else 1


def cmd_tenant(args, settings: KeelSettings):
    from keel import tenants

    if args.action == "create":
        created = tenants.create(settings, args.tenant)
        print(f"tenant {args.tenant} {'created' if created else 'exists'}; credential in {settings.keyring_path}")
    elif args.action == "rotate":
        print(f"tenant {args.tenant}: key version {tenants.rotate(settings, args.tenant)}")
    elif args.action == "list":
        print("\n".join(tenants.tenants(settings)))
    elif args.action == "rotate-master":
        print(f"new master key; {tenants.rotate_master(settings)} tenant key versions re-wrapped")
    elif args.action == "credential":
        if not args.out:
            raise SystemExit("keel tenant credential: --out FILE is required")
        print(f"credential for {args.tenant} written to {tenants.export_credential(settings, args.tenant, Path(args.out))}")
    elif args.action == "forget":
        return _forget(args, settings)
    return 0


async def _forget(args, settings: KeelSettings) -> int:
    from keel import tenants

    done = await tenants.forget(settings, await _client(settings), args.tenant)
    if args.json:
        print(done.to_json())
        return 0
    print(f"forgot tenant {done.tenant}:")
    print(f"  runs terminated: {len(done.runs_terminated)}" + (f" ({', '.join(done.runs_terminated)})" if done.runs_terminated else ""))
    print(f"  index points deleted: {done.index_points}")
    print(f"  blobs deleted: {done.blobs} ({done.blob_bytes} bytes)")
    print(f"  answer-cache entries deleted: {done.cache_entries}")
    print(f"  budget state: {'deleted' if done.budget_state else 'none'}")
    print(f"  key destroyed: {'yes: its Temporal histories are unreadable' if done.key_destroyed else 'no key (unknown tenant)'}")
    return 0


def cmd_gc(args, settings: KeelSettings) -> int:
    from keel.blobs import BlobStore

    n, size = BlobStore(settings.blob_dir).collect_garbage(args.older_than_days * 86400)
    print(f"deleted {n} blobs ({size} bytes) unused for {args.older_than_days} days")
    return 0


def _default_user() -> str:
    return os.environ.get("USER") or "cli"


async def cmd_approvals(args, settings: KeelSettings) -> int:
    from keel.approvals import pending_query, query_pending

    client = await _client(settings)
    rows, unanswered = [], []
    async for run in client.list_workflows(pending_query(args.tenant)):
        try:
            rows.extend(await query_pending(client, run.id, run.run_id))
        except Exception as e:  # no worker answers for that run right now
            unanswered.append((run.id, f"{type(e).__name__}: {e}"))
    if args.json:
        print(json.dumps({
            "approvals": [_pending_json(p) for p in rows],
            "unanswered": [{"workflow_id": w, "error": err} for w, err in unanswered],
        }))
        return 0
    if not rows and not unanswered:
        print("no pending approvals" + (f" for tenant {args.tenant!r}" if args.tenant else ""))
    for p in rows:
        r = p.request
        print(f"{p.workflow_id}  {p.approval_id}  {r.summary}")
        line = f"    approvers: {', '.join(r.approvers)}   allowed: {', '.join(r.allowed)}"
        if r.tenant:
            line += f"   tenant: {r.tenant}"
        print(line)
        due = [f"requested {_when(p.requested_at)}"]
        if p.sla_at:
            due.append(f"SLA {_when(p.sla_at)}" + (" (overdue)" if p.overdue else ""))
        if p.deadline_at:
            due.append(f"auto-{p.on_deadline} at {_when(p.deadline_at)}")
        print("    " + ", ".join(due))
        for key, value in r.details.items():
            print(f"    {key}: {value}")
    for workflow_id, err in unanswered:
        print(f"{workflow_id}  (pending; no worker answered the query: {err})")
    return 0


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _pending_json(p) -> dict:
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(p)


async def _decide(args, settings: KeelSettings, value: str, comment: str) -> int:
    from keel.approvals import DecisionRejected, decide

    client = await _client(settings)
    try:
        decision = await asyncio.wait_for(
            decide(client, args.run_id, value, by=args.user, approval_id=args.approval, comment=comment), DECIDE_TIMEOUT
        )
    except DecisionRejected as e:
        print(f"keel {args.command}: not accepted: {e.message}", file=sys.stderr)
        return 1
    except asyncio.TimeoutError:
        print(
            f"keel {args.command}: no worker took the decision within {DECIDE_TIMEOUT:.0f}s (is the run's worker "
            "running?); it may still be applied when one does",
            file=sys.stderr,
        )
        return 1
    verdict = "approved" if decision.approved else "rejected"
    print(f"{args.run_id}: approval {decision.approval_id!r} {verdict} ({decision.value}) by {decision.decided_by}")
    return 0


DECIDE_TIMEOUT = 60.0


async def cmd_approve(args, settings: KeelSettings) -> int:
    return await _decide(args, settings, "approve", args.comment or "")


async def cmd_reject(args, settings: KeelSettings) -> int:
    return await _decide(args, settings, "reject", args.reason)


def _describe_failure(err: Exception, settings: KeelSettings) -> str:
    from temporalio.client import WorkflowFailureError

    from keel.errors import failure_reason

    if isinstance(err, WorkflowFailureError):
        kind, message = failure_reason(err.cause)
        return f"the workflow failed: {kind}: {message}"
    if "connect" in str(err).lower():
        return f"cannot reach Temporal at {settings.temporal_address} (is `keel up` running?): {err}"
    return f"{type(err).__name__}: {err}"


def _iso_date(value: str) -> str:
    import datetime as dt

    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _reader(value: str) -> str:
    from keel.errors import InvalidRequest
    from keel.types import reader_names

    try:
        return reader_names([value])[0]
    except InvalidRequest as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--app", action="append", default=[], metavar="MODULE", help="also run this module's workflows (repeatable)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `keel up` started").set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show what `keel up` started")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    ingest = sub.add_parser("ingest", help="ingest files and folders")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--tenant", required=True)
    ingest.add_argument("--tag", action="append", default=[], help="tag every document (repeatable)")
    ingest.add_argument("--date", type=_iso_date, help="the documents' date; FILE.meta.json can set tags and date per file")
    ingest.add_argument(
        "--allow", action="append", default=[], type=_reader, metavar="PRINCIPAL",
        help="only this principal may read the documents, user:NAME or group:NAME (repeatable; default: everyone "
        'in the tenant; FILE.meta.json {"readers": [...]} sets them per file)',
    )
    ingest.add_argument("--no-wait", action="store_true", help="print the workflow id and return")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    ask = sub.add_parser("ask", help="answer a question from a tenant's documents")
    ask.add_argument("question")
    ask.add_argument("--tenant", required=True)
    ask.add_argument("--source", help="only this ingested file")
    ask.add_argument("--tag", action="append", default=[], help="only documents with any of these tags")
    ask.add_argument("--since", type=_iso_date, help="only documents dated on or after YYYY-MM-DD")
    ask.add_argument("--until", type=_iso_date, help="only documents dated on or before YYYY-MM-DD")
    ask.add_argument(
        "--as", dest="principal", metavar="USER",
        help="ask as this user: documents with readers are searched only if USER or one of its --group may read them "
        "(without --as and --group: only documents without readers)",
    )
    ask.add_argument("--group", action="append", default=[], help="a group of the asking user (repeatable)")
    ask.add_argument("--no-cache", action="store_true", help="do not answer from the answer cache")
    ask.add_argument("--max-cost", type=float, metavar="USD", help="this run's LLM budget")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated, then the result")
    ask.add_argument("--judge", action="store_true", help="also ask the LLM chain whether the sources support the answer")
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(func=cmd_ask)

    stats = sub.add_parser("stats", help="documents and chunks in a tenant's index")
    stats.add_argument("--tenant", required=True)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    permissions = sub.add_parser("permissions", help="change who may read ingested files (no re-embedding)")
    permissions.add_argument("paths", nargs="+", metavar="PATH", help="files as they were ingested")
    permissions.add_argument("--tenant", required=True)
    permissions.add_argument("--allow", action="append", default=[], type=_reader, metavar="PRINCIPAL",
                             help="user:NAME or group:NAME (repeatable): replaces the files' readers")
    permissions.add_argument("--everyone", action="store_true", help="remove the readers: everyone in the tenant")
    permissions.add_argument("--json", action="store_true")
    permissions.set_defaults(func=cmd_permissions)

    approvals = sub.add_parser("approvals", help="list runs waiting for a human approval")
    approvals.add_argument("--tenant", help="only this tenant's approvals")
    approvals.add_argument("--json", action="store_true")
    approvals.set_defaults(func=cmd_approvals)

    def decision_parser(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("run_id", metavar="RUN_ID", help="the workflow id of the run")
        p.add_argument("--approval", metavar="ID", help="which approval, when the run waits for several")
        p.add_argument("--as", dest="user", default=_default_user(), metavar="USER",
                       help="decide as this approver (default: $USER, else 'cli')")
        return p

    approve = decision_parser("approve", "approve a pending approval")
    approve.add_argument("--comment", metavar="TEXT", help="recorded with the decision")
    approve.set_defaults(func=cmd_approve)
    reject = decision_parser("reject", "reject a pending approval")
    reject.add_argument("--reason", required=True, metavar="TEXT", help="recorded with the decision (its comment)")
    reject.set_defaults(func=cmd_reject)

    tenant = sub.add_parser("tenant", help="create, rotate, list or forget tenants (needs the master key)")
    tenant.add_argument("action", choices=["create", "rotate", "rotate-master", "list", "credential", "forget"])
    tenant.add_argument("tenant", nargs="?", metavar="T")
    tenant.add_argument("--out", metavar="FILE", help="credential: the keyring file to write")
    tenant.add_argument("--json", action="store_true")
    tenant.set_defaults(func=cmd_tenant)

    ct = sub.add_parser("codec-token", help="tokens of the codec server (decrypted payloads in the Web UI)")
    ctsub = ct.add_subparsers(dest="action", required=True)
    add = ctsub.add_parser("add", help="create a token (printed once)")
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "auditor"], required=True)
    add.add_argument("--tenant", action="append", required=True, help="repeatable; '*' for every tenant")
    ctsub.add_parser("list").add_argument("--json", action="store_true")
    ctsub.add_parser("revoke").add_argument("name")
    ct.set_defaults(func=cmd_codec_token)

    gc = sub.add_parser("gc", help="delete blobs no run has used for a while")
    gc.add_argument("--older-than-days", type=float, default=30.0, metavar="N")
    gc.set_defaults(func=cmd_gc)

    # Operations (runs, redrive, replay, schedules) and evaluations (eval, whatif) live in their
    # own modules; each adds its subcommands here.
    from keel import evaluation, ops

    ops.register(sub)
    evaluation.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tenant" and args.action not in ("list", "rotate-master") and not args.tenant:
        build_parser().error(f"keel tenant {args.action}: name the tenant")
    settings = KeelSettings()
    result = args.func(args, settings)
    if not asyncio.iscoroutine(result):
        return result
    try:
        code = asyncio.run(result)
    except Exception as e:  # report, don't dump a traceback of the client's internals
        code = 1
        print(f"keel {args.command}: {_describe_failure(e, settings)}", file=sys.stderr)
    # The Temporal client's native threads can abort interpreter shutdown of a short-lived
    # process ("PyGILState_Release ... finalizing", temporalio/sdk-python#300): skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
