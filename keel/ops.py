"""Operations from the command line: failed runs, redrive, replay, schedules (issue 13).

    keel runs --failed [--type T] [--since D] [--tenant T] [--limit N] [--json]
        failed runs (Temporal visibility, ``ExecutionStatus = 'Failed'``), each with its typed
        reason: the innermost failure's type (``FileNotFoundError``, ``DocumentTooLarge``,
        ``PermissionDenied``...), its message and the step (activity or child workflow) that
        failed. ``--since`` takes a date, an ISO time or an age (``90m``, ``6h``, ``2d``) and
        filters on StartTime. ``--tenant`` is read from the run's start input: Keel's codec puts
        the key id ``tenant:version`` in clear metadata of every sealed payload (ingest runs
        carry no ``KeelTenant`` search attribute). Without ``--failed``: runs of any status.
    keel redrive [--type T] [--since D] [--tenant T] [--rate N] [--reset] [--dry-run] [--json]
        re-runs those failed runs from their recorded inputs: a new run of the same workflow type
        on the same task queue, with the failed run's timeouts, retry policy and memo, and its
        input payloads passed through byte for byte (still sealed for the run's tenant: no
        re-encoding, no type guessing), at most N starts per second (default 5). Idempotent:
        the new workflow id is derived from the failed run, ``<id>-redrive-<first 8 of run id>``
        (a failed redrive keeps its own id), started with id reuse policy
        ``ALLOW_DUPLICATE_FAILED_ONLY`` and conflict policy ``FAIL``. So while a redrive runs,
        or once it completed, another ``keel redrive`` skips it; only a redrive that failed
        again is run again, as a new run of the same id (one run per failure per redrive).
        A failed run that is no longer the latest run of its workflow id (re-run since, or
        reset) is skipped as superseded. A redriven child run (``IngestDocument``) runs on its
        own, without its parent.
        ``--reset`` instead resets each failed run (Temporal reset) to the workflow task that
        scheduled the failed step: steps that completed are kept, the failed one runs again, as
        a new run of the same workflow id (which supersedes the failed run: a second
        ``--reset`` skips it). Right for long runs whose completed steps are expensive, and
        only when the current code replays the kept part (``keel replay`` says); the default
        new run works across any code change.
    keel replay WORKFLOW_ID [--run-id R] [--app MODULE]... [--json]
        replays the run's history against the current workflow code (Keel's workflows, plus
        ``--app`` modules'): exit 0 if compatible, 1 with the nondeterminism error if not.
    keel schedule add NAME --cron EXPR [--timezone TZ] [--json] reindex PATH... --tenant T [--tag TAG]...
    keel schedule add NAME --cron EXPR [--timezone TZ] [--json] eval ARGS...   (keel eval's arguments)
    keel schedule list | pause NAME | unpause NAME | trigger NAME | delete NAME   [--json]
        Temporal Schedules; a schedule's id is NAME (its options go before the action word). ``reindex`` starts the ``IngestCorpus`` run
        that ``keel ingest`` starts (unchanged documents are skipped); overlapping runs are
        skipped. ``trigger`` starts a run now and prints its workflow id.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

REDRIVE_MARK = "-redrive-"
_REDRIVE_ID = re.compile(r"-redrive-[0-9a-f]{8}$")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- shared helpers ----------------------------------------------------------------------------


def _since(value: str) -> dt.datetime:
    """A date (YYYY-MM-DD, midnight UTC), an ISO time, or an age such as ``90m``, ``6h``, ``2d``."""
    m = _AGE.match(value.strip())
    if m:
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=float(m.group(1)) * _AGE_UNITS[m.group(2)])
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date, time or age (2026-01-31, 2026-01-31T08:00, 6h, 2d): {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _iso(t) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat() if t else None


def redrive_id(workflow_id: str, run_id: str) -> str:
    """The workflow id of the redrive of a failed run: derived from the run, so repeating a
    redrive finds it; a redrive that failed again keeps its own id.

    >>> redrive_id("ingest-acme-1", "5f0c7a2e-aaaa-bbbb")
    'ingest-acme-1-redrive-5f0c7a2e'
    >>> redrive_id("ingest-acme-1-redrive-5f0c7a2e", "0d9e8f7a-cccc")
    'ingest-acme-1-redrive-5f0c7a2e'
    """
    if _REDRIVE_ID.search(workflow_id):
        return workflow_id
    return f"{workflow_id}{REDRIVE_MARK}{run_id.replace('-', '')[:8]}"


def payload_tenant(payload) -> str | None:
    """The tenant a payload belongs to: from a sealed payload's clear key id, else (encryption
    off) the first ``tenant`` field of its JSON."""
    key = payload.metadata.get("keel-key")
    if key:
        tenant, _, _ = key.decode().rpartition(":")
        return tenant or None
    from keel._codec import named_tenants

    named = named_tenants(payload)
    return named[0] if named else None


def _emit(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj) if as_json else text)


# --- runs --------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    task_queue: str
    start_time: str | None
    close_time: str | None
    tenant: str | None = None
    error_type: str | None = None  # the innermost failure's type (ApplicationError type or exception name)
    message: str | None = None
    step: str | None = None  # the activity or child workflow type that failed, if a step did
    parent_workflow_id: str | None = None
    ui_url: str = ""


def runs_query(*, failed: bool, workflow_type: str | None, since: dt.datetime | None) -> str:
    """The visibility query of ``keel runs`` / ``keel redrive``.

    >>> runs_query(failed=True, workflow_type="IngestCorpus", since=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    "ExecutionStatus = 'Failed' AND WorkflowType = 'IngestCorpus' AND StartTime >= '2026-01-02T00:00:00.000000Z'"
    """
    parts = []
    if failed:
        parts.append("ExecutionStatus = 'Failed'")
    if workflow_type:
        parts.append(f"WorkflowType = {_quote(workflow_type)}")
    if since:
        parts.append(f"StartTime >= {_quote(_rfc3339(since))}")
    return " AND ".join(parts)


async def _first_event(client, workflow_id: str, run_id: str):
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(page_size=1):
        return event
    return None


async def _close_event(client, workflow_id: str, run_id: str):
    from temporalio.client import WorkflowHistoryEventFilterType

    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
        return event
    return None


async def failure_of(client, failure) -> tuple[str, str, str | None]:
    """(type, message, failed step) of a run's failure, decoded with the client's keys; a
    failure this client cannot decrypt keeps its (clear) type, with the message withheld."""
    from temporalio.exceptions import ActivityError, ChildWorkflowError

    from keel.errors import failure_reason

    try:
        err = await client.data_converter.decode_failure(failure)
    except Exception as e:  # no key for this tenant: types are in clear, messages are sealed
        f = failure
        while f.HasField("cause") and (f.HasField("activity_failure_info") or f.HasField("child_workflow_execution_failure_info")):
            f = f.cause
        kind = f.application_failure_info.type if f.HasField("application_failure_info") and f.application_failure_info.type else "Failure"
        return kind, f"(message not readable here: {type(e).__name__})", None
    step, inner = None, err
    while inner is not None:  # the first step on the cause chain (a workflow may re-raise it typed)
        if isinstance(inner, (ActivityError, ChildWorkflowError)):
            step = inner.activity_type if isinstance(inner, ActivityError) else inner.workflow_type
            break
        inner = inner.__cause__ or getattr(inner, "cause", None)
    kind, message = failure_reason(err)
    return kind, message, step


async def list_runs(
    client, settings, *, failed: bool = True, workflow_type: str | None = None, since: dt.datetime | None = None,
    tenant: str | None = None, limit: int = 100, with_start: bool = False,
):
    """Runs matching the filters, newest first, failed ones with their typed reason. With
    ``with_start``: ``(RunInfo, start event)`` pairs (what ``redrive`` starts from)."""
    out = []
    async for wf in client.list_workflows(runs_query(failed=failed, workflow_type=workflow_type, since=since) or None):
        start = None
        run_tenant = None
        if tenant is not None or with_start:
            start = await _first_event(client, wf.id, wf.run_id)
            attrs = start.workflow_execution_started_event_attributes if start else None
            if attrs is not None and attrs.input.payloads:
                run_tenant = payload_tenant(attrs.input.payloads[0])
            if tenant is not None and run_tenant != tenant:
                continue
        status = wf.status.name if wf.status else "UNKNOWN"
        info = RunInfo(
            workflow_id=wf.id, run_id=wf.run_id, workflow_type=wf.workflow_type, status=status,
            task_queue=wf.task_queue, start_time=_iso(wf.start_time), close_time=_iso(wf.close_time), tenant=run_tenant,
            parent_workflow_id=wf.parent_id, ui_url=settings.run_ui_url(wf.id, wf.run_id),
        )
        if status == "FAILED":
            close = await _close_event(client, wf.id, wf.run_id)
            if close is not None and close.HasField("workflow_execution_failed_event_attributes"):
                info.error_type, info.message, info.step = await failure_of(
                    client, close.workflow_execution_failed_event_attributes.failure
                )
        out.append((info, start) if with_start else info)
        if len(out) >= limit:
            break
    return out


async def cmd_runs(args, settings) -> int:
    from keel.cli import _client

    client = await _client(settings)
    runs = await list_runs(
        client, settings, failed=args.failed, workflow_type=args.type, since=args.since, tenant=args.tenant, limit=args.limit
    )
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs]}))
        return 0
    if not runs:
        print("no failed runs" if args.failed else "no runs")
    for r in runs:
        line = f"{r.start_time or '-':32} {r.workflow_type:16} {r.workflow_id}"
        if r.tenant:
            line += f"  tenant {r.tenant}"
        print(line if args.failed else f"{line}  {r.status}")
        if r.error_type:
            print(f"    {r.error_type}: {r.message}" + (f"  (in {r.step})" if r.step else ""))
        print(f"    {r.ui_url}")
    return 0


# --- redrive -----------------------------------------------------------------------------------


@dataclass
class Redrive:
    workflow_id: str
    run_id: str
    workflow_type: str
    error_type: str | None
    redrive_id: str
    action: str  # "started", "reset", "would start", "would reset", "skipped", "error"
    reason: str = ""
    new_run_id: str | None = None


def reset_point(events) -> int | None:
    """The ``WorkflowTaskCompleted`` event a failed run is reset to: the one that scheduled the
    step whose failure failed the run (the step runs again, what completed before is kept);
    if no step failed (the workflow code raised), the last one before the failure."""
    from temporalio.api.enums.v1 import EventType

    by_id = {e.event_id: e for e in events}
    failed_step = None
    for e in events:
        if e.event_type in (EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED, EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT):
            attrs = e.activity_task_failed_event_attributes if e.HasField("activity_task_failed_event_attributes") else e.activity_task_timed_out_event_attributes
            failed_step = by_id.get(attrs.scheduled_event_id)
        elif e.event_type in (
            EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT
        ):
            attrs = e.child_workflow_execution_failed_event_attributes if e.HasField("child_workflow_execution_failed_event_attributes") else e.child_workflow_execution_timed_out_event_attributes
            failed_step = by_id.get(attrs.initiated_event_id)
    if failed_step is not None:
        if failed_step.HasField("activity_task_scheduled_event_attributes"):
            return failed_step.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
        return failed_step.start_child_workflow_execution_initiated_event_attributes.workflow_task_completed_event_id
    done = [e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    return done[-2] if len(done) >= 2 else (done[0] - 1 if done else None)  # 1st task: reset to its start


async def _start_from_recorded(client, start_event, new_id: str) -> str:
    """Start ``new_id`` with the failed run's type, task queue, timeouts, retry policy, memo and
    search attributes, and its input payloads exactly as recorded (still sealed)."""
    from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest

    a = start_event.workflow_execution_started_event_attributes
    req = StartWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_id=new_id,
        workflow_type=a.workflow_type,
        task_queue=TaskQueue(name=a.task_queue.name),
        input=a.input,
        identity=client.identity,
        request_id=str(uuid.uuid4()),
        # Never a second run beside a running or completed redrive; again only if it failed.
        workflow_id_reuse_policy=WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
        workflow_id_conflict_policy=WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
        memo=a.memo,
        search_attributes=a.search_attributes,
    )
    for name in ("workflow_execution_timeout", "workflow_run_timeout", "workflow_task_timeout", "retry_policy"):
        if a.HasField(name):
            getattr(req, name).CopyFrom(getattr(a, name))
    resp = await client.workflow_service.start_workflow_execution(req)
    return resp.run_id


async def _reset(client, info: RunInfo) -> str:
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest

    handle = client.get_workflow_handle(info.workflow_id, run_id=info.run_id)
    events = [e async for e in handle.fetch_history_events()]
    point = reset_point(events)
    if point is None:
        raise RuntimeError("no workflow task to reset to")
    resp = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=info.workflow_id, run_id=info.run_id),
            reason=f"keel redrive --reset of failed run {info.run_id}",
            workflow_task_finish_event_id=point,
            request_id=f"keel-redrive-reset-{info.run_id}",  # the server dedupes a repeat
            identity=client.identity,
        )
    )
    return resp.run_id


async def _describe_status(client, workflow_id: str, run_id: str | None = None):
    from temporalio.service import RPCError, RPCStatusCode

    try:
        d = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return d


async def redrive(
    client, settings, *, workflow_type=None, since=None, tenant=None, rate: float = 5.0, dry_run: bool = False,
    reset: bool = False, limit: int = 1000,
) -> list[Redrive]:
    from temporalio.service import RPCError, RPCStatusCode

    failed = await list_runs(
        client, settings, failed=True, workflow_type=workflow_type, since=since, tenant=tenant, limit=limit, with_start=True
    )
    out: list[Redrive] = []
    seen: set[str] = set()
    for info, start in failed:
        target = info.workflow_id if reset else redrive_id(info.workflow_id, info.run_id)
        r = Redrive(info.workflow_id, info.run_id, info.workflow_type, info.error_type, target, "skipped")
        out.append(r)
        if target in seen:
            r.reason = f"covered by the redrive {target} of another failed run listed"
            continue
        seen.add(target)
        latest = await _describe_status(client, info.workflow_id)
        if latest is not None and latest.run_id != info.run_id:
            # Re-run since (by a redrive, a reset, or anything else): that newer run counts.
            r.reason = f"superseded by run {latest.run_id} ({latest.status.name if latest.status else '?'})"
            continue
        if not reset:
            existing = await _describe_status(client, target)
            if existing is not None and existing.status is not None and existing.status.name in ("RUNNING", "COMPLETED", "CONTINUED_AS_NEW"):
                r.reason = f"already redriven: {target} {existing.status.name}"
                continue
        if dry_run:
            r.action = "would reset" if reset else "would start"
            continue
        if start is None:
            r.action, r.reason = "error", "no history"
            continue
        try:
            if reset:
                r.new_run_id = await _reset(client, info)
                r.action = "reset"
            else:
                r.new_run_id = await _start_from_recorded(client, start, target)
                r.action = "started"
        except RPCError as e:
            if e.status == RPCStatusCode.ALREADY_EXISTS:
                r.reason = f"already redriven: {target} exists"
            else:
                r.action, r.reason = "error", f"{e.status.name}: {e.message}"
            continue
        except Exception as e:
            r.action, r.reason = "error", f"{type(e).__name__}: {e}"
            continue
        if rate > 0:
            await asyncio.sleep(1.0 / rate)
    return out


async def cmd_redrive(args, settings) -> int:
    from keel.cli import _client

    client = await _client(settings)
    rows = await redrive(
        client, settings, workflow_type=args.type, since=args.since, tenant=args.tenant, rate=args.rate,
        dry_run=args.dry_run, reset=args.reset,
    )
    counts = {k: sum(r.action == k for r in rows) for k in ("started", "reset", "would start", "would reset", "skipped", "error")}
    if args.json:
        print(json.dumps({**{k.replace(" ", "_"): v for k, v in counts.items()}, "runs": [asdict(r) for r in rows]}))
    else:
        for r in rows:
            what = {"started": f"started {r.redrive_id} ({r.new_run_id})", "reset": f"reset to run {r.new_run_id}"}.get(
                r.action, f"{r.action}" + (f": {r.reason}" if r.reason else "")
            )
            if r.action in ("would start", "would reset"):
                what += f" {r.redrive_id}"
            print(f"{r.workflow_type:16} {r.workflow_id} ({r.error_type}): {what}")
        print(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no failed runs to redrive")
    return 1 if counts["error"] else 0


# --- replay ------------------------------------------------------------------------------------


def _replay_workflows(apps) -> list[type]:
    """The ``--app`` modules' workflows (Keel's own come with the plugin)."""
    from keel.worker import load_app

    return [w for app in apps for w in load_app(app)[0]]


async def replay_run(client, settings, workflow_id: str, run_id: str | None = None, apps: list[str] = ()) -> dict:
    """Replay one run's history against the current code: ``{"compatible": bool, "error": ...}``."""
    from temporalio.worker import Replayer

    from keel.plugin import KeelPlugin

    workflows = _replay_workflows(apps)
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes if history.events else None
    replayer = Replayer(workflows=workflows, plugins=[KeelPlugin(settings)])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    failure = result.replay_failure
    return {
        "workflow_id": workflow_id,
        "run_id": run_id,
        "workflow_type": started.workflow_type.name if started else None,
        "events": len(history.events),
        "compatible": failure is None,
        "error": None if failure is None else f"{type(failure).__name__}: {failure}",
    }


async def cmd_replay(args, settings) -> int:
    from keel.cli import _client

    client = await _client(settings)
    if args.run_id is None:
        desc = await client.get_workflow_handle(args.workflow_id).describe()
        args.run_id = desc.run_id
    out = await replay_run(client, settings, args.workflow_id, args.run_id, args.app)
    out["run_id"] = args.run_id
    if args.json:
        print(json.dumps(out))
    elif out["compatible"]:
        print(f"{args.workflow_id} ({out['workflow_type']}, run {args.run_id}, {out['events']} events): replays with the current code")
    else:
        print(f"{args.workflow_id} ({out['workflow_type']}, run {args.run_id}): NOT compatible with the current code")
        print(f"    {out['error']}")
    return 0 if out["compatible"] else 1


# --- schedules ---------------------------------------------------------------------------------


def schedule_action(args, settings) -> tuple:
    """``(workflow run method, input, task queue)`` of a scheduled action, and its command line."""
    if args.what == "reindex":
        from keel.workflows.ingest import IngestCorpus

        paths = [str(Path(p).resolve()) for p in args.paths]
        inp = settings.ingest_input(args.tenant, paths, tags=args.tag, date=args.date)
        inp.readers = args.allow
        command = " ".join(["reindex", *paths, "--tenant", args.tenant, *(f"--tag {t}" for t in args.tag)]
                           + ([f"--date {args.date}"] if args.date else []) + [f"--allow {a}" for a in args.allow])
        return (IngestCorpus.run, inp, settings.task_queue), command
    from keel.evaluation import schedule_action_args  # keel eval's own argument parsing

    return schedule_action_args(list(args.eval_args), settings), " ".join(["eval", *args.eval_args])


async def _schedule_row(handle) -> dict:
    d = await handle.describe()
    action = d.schedule.action
    memo = {}
    try:
        memo = await d.memo()
    except Exception:  # a memo this client cannot read
        pass
    recent = [
        {"workflow_id": a.action.workflow_id, "run_id": a.action.first_execution_run_id, "started_at": _iso(a.started_at)}
        for a in d.info.recent_actions
    ]
    return {
        "name": d.id,
        "workflow_type": getattr(action, "workflow", None),
        "task_queue": getattr(action, "task_queue", None),
        "cron": memo.get("keel_cron") or list(d.schedule.spec.cron_expressions),
        "command": memo.get("keel_command"),
        "paused": d.schedule.state.paused,
        "note": d.schedule.state.note,
        "next_runs": [_iso(t) for t in d.info.next_action_times[:3]],
        "recent_runs": recent,
        "runs": d.info.num_actions,
    }


async def cmd_schedule(args, settings) -> int:
    from temporalio.client import (
        Schedule, ScheduleActionStartWorkflow, ScheduleAlreadyRunningError, ScheduleOverlapPolicy, SchedulePolicy,
        ScheduleSpec, ScheduleState,
    )
    from temporalio.service import RPCError, RPCStatusCode

    from keel.cli import _client

    client = await _client(settings)
    if args.action == "add":
        (run, inp, queue), command = schedule_action(args, settings)
        try:
            await client.create_schedule(
                args.name,
                Schedule(
                    action=ScheduleActionStartWorkflow(run, inp, id=f"{args.name}-run", task_queue=queue),
                    spec=ScheduleSpec(cron_expressions=[args.cron], time_zone_name=args.timezone),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
                    state=ScheduleState(note=f"keel schedule add: {command}"),
                ),
                memo={"keel_cron": args.cron, "keel_command": command},
            )
        except ScheduleAlreadyRunningError:
            print(f"keel schedule add: a schedule named {args.name!r} exists (delete it first)", file=sys.stderr)
            return 1
        _emit({"name": args.name, "cron": args.cron, "command": command}, args.json, f"schedule {args.name}: {args.cron} {command}")
        return 0
    if args.action == "list":
        rows = []
        async for s in await client.list_schedules():
            try:
                rows.append(await _schedule_row(client.get_schedule_handle(s.id)))
            except RPCError as e:  # deleted between list and describe
                if e.status != RPCStatusCode.NOT_FOUND:
                    raise
        if args.json:
            print(json.dumps({"schedules": rows}))
            return 0
        if not rows:
            print("no schedules")
        for r in rows:
            cron = r["cron"] if isinstance(r["cron"], str) else ",".join(r["cron"])
            print(f"{r['name']:24} {cron:16} {r['workflow_type'] or '-':14} {'PAUSED' if r['paused'] else 'active'}"
                  f"  next {r['next_runs'][0] if r['next_runs'] else '-'}  runs {r['runs']}")
            if r["command"]:
                print(f"    {r['command']}")
        return 0

    handle = client.get_schedule_handle(args.name)
    try:
        if args.action == "pause":
            await handle.pause(note="paused with keel schedule pause")
            _emit({"name": args.name, "paused": True}, args.json, f"schedule {args.name} paused")
        elif args.action == "unpause":
            await handle.unpause(note="unpaused with keel schedule unpause")
            _emit({"name": args.name, "paused": False}, args.json, f"schedule {args.name} unpaused")
        elif args.action == "delete":
            await handle.delete()
            _emit({"name": args.name, "deleted": True}, args.json, f"schedule {args.name} deleted")
        elif args.action == "trigger":
            before = {a.action.workflow_id for a in (await handle.describe()).info.recent_actions}
            # Runs now even if paused; overlapping a running action is allowed for a manual trigger.
            from temporalio.client import ScheduleOverlapPolicy as Overlap

            await handle.trigger(overlap=Overlap.ALLOW_ALL)
            started = None
            for _ in range(50):  # the run starts asynchronously: report it once it has
                recent = (await handle.describe()).info.recent_actions
                new = [a for a in recent if a.action.workflow_id not in before]
                if new:
                    started = new[-1].action
                    break
                await asyncio.sleep(0.2)
            out = {"name": args.name, "triggered": True, "workflow_id": started.workflow_id if started else None,
                   "run_id": started.first_execution_run_id if started else None}
            _emit(out, args.json, f"schedule {args.name} triggered: {out['workflow_id'] or '(run not started yet)'}")
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            print(f"keel schedule {args.action}: no schedule named {args.name!r}", file=sys.stderr)
            return 1
        raise
    return 0


# --- CLI -----------------------------------------------------------------------------------------


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError("the rate must be > 0 (starts per second)")
    return rate


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keel runs|redrive|replay|schedule`` to the CLI's subcommands."""

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--type", metavar="T", help="only runs of this workflow type (IngestCorpus, AnswerQuestion...)")
        p.add_argument("--since", type=_since, metavar="D", help="only runs started since D: YYYY-MM-DD, an ISO time, or an age (6h, 2d)")
        p.add_argument("--tenant", metavar="T", help="only this tenant's runs")
        p.add_argument("--json", action="store_true")

    runs = sub.add_parser("runs", help="list failed runs with their typed reasons")
    runs.add_argument("--failed", action="store_true", help="only failed runs (without: runs of any status)")
    runs.add_argument("--limit", type=int, default=100, metavar="N")
    filters(runs)
    runs.set_defaults(func=cmd_runs)

    rd = sub.add_parser("redrive", help="re-run failed runs from their recorded inputs (idempotent, rate-limited)")
    filters(rd)
    rd.add_argument("--rate", type=_rate, default=5.0, metavar="N", help="at most N starts per second (default 5)")
    rd.add_argument("--reset", action="store_true", help="reset each run to its failed step instead of a new run")
    rd.add_argument("--dry-run", action="store_true", help="show what would be redriven")
    rd.set_defaults(func=cmd_redrive)

    rp = sub.add_parser("replay", help="replay a run's history against the current workflow code")
    rp.add_argument("workflow_id", metavar="WORKFLOW_ID")
    rp.add_argument("--run-id", metavar="R", help="this run (default: the latest run of WORKFLOW_ID)")
    rp.add_argument("--app", action="append", default=[], metavar="MODULE", help="also this module's workflows (repeatable)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_replay)

    sc = sub.add_parser("schedule", help="Temporal Schedules: periodic reindex or evaluation")
    scsub = sc.add_subparsers(dest="action", required=True)
    add = scsub.add_parser(
        "add", help="add a schedule",
        description="keel schedule add NAME --cron EXPR reindex PATH... --tenant T | eval ARGS... (keel eval's arguments)",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--cron", required=True, metavar="EXPR", help='a cron expression, e.g. "0 2 * * *"')
    add.add_argument("--timezone", metavar="TZ", help="the cron's time zone (default UTC)")
    add.add_argument("--json", action="store_true")
    what = add.add_subparsers(dest="what", required=True, metavar="reindex|eval")
    ri = what.add_parser("reindex", help="re-ingest paths (as keel ingest; unchanged documents are skipped)")
    ri.add_argument("paths", nargs="+", metavar="PATH")
    ri.add_argument("--tenant", required=True)
    ri.add_argument("--tag", action="append", default=[])
    ri.add_argument("--date")
    ri.add_argument("--allow", action="append", default=[], metavar="PRINCIPAL")
    # Everything after `eval` is keel eval's own arguments, parsed by keel.evaluation: no
    # option of this parser ('+' prefix) may swallow them.
    ev = what.add_parser("eval", help="run an evaluation (keel eval's arguments)", prefix_chars="+", add_help=False)
    ev.add_argument("eval_args", nargs=argparse.REMAINDER, metavar="ARGS")
    scsub.add_parser("list", help="list schedules").add_argument("--json", action="store_true")
    for name, help in (("pause", "pause a schedule"), ("unpause", "resume a paused schedule"),
                       ("trigger", "start a run of a schedule now"), ("delete", "delete a schedule")):
        p = scsub.add_parser(name, help=help)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_schedule)


async def run(argv: list[str], settings) -> int:
    """Run one of these commands in this process (tests; ``keel.cli.main`` exits the process)."""
    from keel.cli import build_parser

    args = build_parser().parse_args(argv)
    result = args.func(args, settings)
    return await result if asyncio.iscoroutine(result) else result
