"""Human approvals (``keel.approval``) on the real Temporal dev server: a pending approval survives
worker and server restarts, the update's validator refuses what it must (leaving no trace),
escalation notifies then decides at the deadline, and the ``keel`` CLI lists, approves and rejects.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from keel import DecisionRejected, KeelPlugin, KeelSettings
from keel.approvals import decide, query_pending
from keel.search_attributes import KEEL_APPROVAL, KEEL_TENANT
from keel.stack import port_open, settings_env
from keel.testing import DevServer, KeelTestEnv
from tests.approval_app import ACTIVITIES, WORKFLOWS, RefundApproval, RefundInput, TwoApprovals
from tests.conftest import ROOT

pytestmark = pytest.mark.asyncio(loop_scope="session")

UPDATE_ACCEPTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
UPDATE_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED
RUN_TIMEOUT = timedelta(minutes=2)  # a broken workflow task retries forever: fail instead


def env_on(address: str, data_dir: Path, task_queue: str | None = None) -> KeelTestEnv:
    return KeelTestEnv(
        WORKFLOWS, ACTIVITIES, address=address, fake_llm=False, task_queue=task_queue, data_dir=data_dir
    )


@pytest.fixture(scope="module")
async def env(temporal_settings, tmp_path_factory) -> AsyncIterator[KeelTestEnv]:
    async with env_on(temporal_settings.temporal_address, tmp_path_factory.mktemp("approvals")) as e:
        yield e


async def start_refund(env: KeelTestEnv, inp: RefundInput, workflow_id: str | None = None):
    return await env.client.start_workflow(
        RefundApproval.run, inp, id=workflow_id or f"refund-{uuid.uuid4().hex[:10]}",
        task_queue=env.task_queue, execution_timeout=RUN_TIMEOUT,
    )


async def wait_pending(client: Client, workflow_id: str, count: int = 1, timeout: float = 30) -> list:
    """The run's pending approvals, once it has ``count`` of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            pending = await query_pending(client, workflow_id)
            if len(pending) >= count:
                return pending
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{workflow_id} has no {count} pending approval(s)")
        await asyncio.sleep(0.2)


async def until(predicate, what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def update_events(handle) -> list[EventType.ValueType]:
    return [e.event_type async for e in handle.fetch_history_events() if e.event_type in (UPDATE_ACCEPTED, UPDATE_COMPLETED)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- (a) restarts -----------------------------------------------------------------------------


async def test_a_pending_approval_survives_worker_and_server_restarts(tmp_path):
    effects = tmp_path / "effects.log"
    queue = f"refunds-{uuid.uuid4().hex[:6]}"
    workflow_id = f"refund-restart-{uuid.uuid4().hex[:6]}"
    tenant = f"t{uuid.uuid4().hex[:6]}"
    server = DevServer(data_dir=tmp_path / "temporal")  # a persistent SQLite file, same port on restart
    server.start()  # returns once the frontend serves
    try:
        async with env_on(server.address, tmp_path / "keel", queue) as env:
            handle = await start_refund(
                env,
                RefundInput("42", str(effects), tenant=tenant, sla_seconds=3600, notify_after_seconds=7200, deadline_seconds=14400),
                workflow_id,
            )
            [pending] = await wait_pending(env.client, workflow_id)
            assert pending.approval_id == "refund-42" and pending.request.approvers == ["alice", "bob"]
            attributes = (await handle.describe()).typed_search_attributes
            assert attributes.get(KEEL_APPROVAL) == "pending" and attributes.get(KEEL_TENANT) == tenant
        assert len(lines(effects)) == 1

        # A new worker (no cached state: it replays the run, handlers included) sees it pending.
        async with env_on(server.address, tmp_path / "keel", queue) as env:
            [pending] = await wait_pending(env.client, workflow_id)
            assert pending.approval_id == "refund-42"

        # The server goes down and comes back on the same database file and port.
        server.stop()
        host, _, port = server.address.rpartition(":")
        assert not port_open(host, int(port))
        server.start()

        async with env_on(server.address, tmp_path / "keel", queue) as env:
            handle = env.client.get_workflow_handle_for(RefundApproval.run, workflow_id)
            [pending] = await wait_pending(env.client, workflow_id)
            assert pending.approval_id == "refund-42" and not pending.overdue
            decision = await decide(env.client, workflow_id, "approve", by="alice", comment="checked the order")
            assert decision.approved and decision.decided_by == "alice" and decision.reason == "decided"
            assert decision.comment == "checked the order" and decision.within_sla
            outcome = await asyncio.wait_for(handle.result(), 30)
            assert outcome.refunded and outcome.decision == decision
            assert (await handle.describe()).typed_search_attributes.get(KEEL_APPROVAL) == "decided"

            # The activity before the wait ran exactly once, across both restarts.
            assert lines(effects) == [f"42\t{workflow_id}"]
            assert await update_events(handle) == [UPDATE_ACCEPTED, UPDATE_COMPLETED]
            # The run's history replays on the current code (handlers registered on first use).
            history = await handle.fetch_history()
            replay = await Replayer(workflows=WORKFLOWS, plugins=[KeelPlugin(env.settings)]).replay_workflow(
                history, raise_on_replay_failure=False
            )
            assert replay.replay_failure is None, replay.replay_failure
    finally:
        server.stop()


# --- (b) the validator --------------------------------------------------------------------------


async def test_b_rejected_decisions_change_nothing_and_leave_no_trace(env, tmp_path):
    handle = await start_refund(env, RefundInput("7", str(tmp_path / "effects.log")))
    await wait_pending(env.client, handle.id)

    with pytest.raises(DecisionRejected, match="'mallory' may not decide approval 'refund-7'"):
        await decide(env.client, handle.id, "approve", by="mallory")
    with pytest.raises(DecisionRejected, match="'maybe' is not an allowed decision"):
        await decide(env.client, handle.id, "maybe", by="alice")
    with pytest.raises(DecisionRejected, match="no approval 'refund-8'"):
        await decide(env.client, handle.id, "approve", by="alice", approval_id="refund-8")

    [pending] = await query_pending(env.client, handle.id)
    assert pending.approval_id == "refund-7"
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await update_events(handle) == []  # no rejected update entered the history

    decision = await decide(env.client, handle.id, "reject", by="bob", comment="duplicate request")
    assert not decision.approved and decision.value == "reject" and decision.decided_by == "bob"
    outcome = await asyncio.wait_for(handle.result(), 30)
    assert not outcome.refunded and outcome.decision.comment == "duplicate request"
    assert await update_events(handle) == [UPDATE_ACCEPTED, UPDATE_COMPLETED]
    with pytest.raises(DecisionRejected):  # the run is over: nothing to decide
        await decide(env.client, handle.id, "approve", by="alice")


async def test_b_several_approvals_of_one_run_are_told_apart_by_id(env):
    handle = await env.client.start_workflow(
        TwoApprovals.run, "C-9", id=f"contract-{uuid.uuid4().hex[:8]}", task_queue=env.task_queue,
        execution_timeout=RUN_TIMEOUT,
    )
    pending = await wait_pending(env.client, handle.id, count=2)
    assert sorted(p.approval_id for p in pending) == ["finance", "legal"]
    with pytest.raises(DecisionRejected, match=r"2 approvals are pending \(legal, finance\): name one"):
        await decide(env.client, handle.id, "approve", by="lena")
    with pytest.raises(DecisionRejected, match="'fred' may not decide approval 'legal'"):
        await decide(env.client, handle.id, "approve", by="fred", approval_id="legal")

    finance = await decide(env.client, handle.id, "approve_reduced", by="fred", approval_id="finance")
    assert finance.approved and finance.value == "approve_reduced"
    [left] = await query_pending(env.client, handle.id)
    assert left.approval_id == "legal"
    legal = await decide(env.client, handle.id, "approve", by="lena")  # the only one left: no id needed
    assert [d.approval_id for d in await asyncio.wait_for(handle.result(), 30)] == ["legal", "finance"]
    assert legal.approved


# --- (c) escalation ------------------------------------------------------------------------------


class Webhook:
    """A loopback HTTP endpoint that records the notifications POSTed to it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self.status = 204  # what it answers
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.received.append((self.headers["Idempotency-Key"], body))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, workflow_id: str) -> list[str]:
        return [body["event"] for _, body in self.received if body["workflow_id"] == workflow_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


async def test_c_escalation_notifies_then_auto_rejects_at_the_deadline(env, webhook, tmp_path):
    inp = RefundInput(
        "11", str(tmp_path / "effects.log"), sla_seconds=2, notify_after_seconds=1, deadline_seconds=3,
        on_deadline="reject", webhook_url=webhook.url,
    )
    handle = await start_refund(env, inp)
    outcome = await asyncio.wait_for(handle.result(), 60)
    d = outcome.decision
    assert (d.approved, d.reason, d.value, d.decided_by, d.within_sla) == (False, "auto_rejected", "reject", "keel", False)
    assert not outcome.refunded
    assert webhook.events(handle.id) == ["requested", "escalated", "sla_breached", "auto_rejected"]
    keys = [key for key, body in webhook.received if body["workflow_id"] == handle.id]
    assert len(set(keys)) == 4 and all(k.startswith(f"{handle.id}/") for k in keys)
    escalated = next(body for _, body in webhook.received if body["event"] == "escalated" and body["workflow_id"] == handle.id)
    assert escalated["recipients"] == ["manager"] and escalated["details"] == {"order": "11"}
    assert (await handle.describe()).typed_search_attributes.get(KEEL_APPROVAL) == "decided"
    with pytest.raises(DecisionRejected):  # too late
        await decide(env.client, handle.id, "approve", by="alice")


async def test_c_deadline_can_auto_approve_and_a_timely_decision_stops_escalation(env, webhook, tmp_path):
    auto = await start_refund(
        env, RefundInput("12", str(tmp_path / "a.log"), deadline_seconds=1, on_deadline="approve", webhook_url=webhook.url)
    )
    decided = await start_refund(
        env, RefundInput("13", str(tmp_path / "b.log"), notify_after_seconds=2, deadline_seconds=3, webhook_url=webhook.url)
    )
    await wait_pending(env.client, decided.id)
    await until(lambda: webhook.events(decided.id) == ["requested"], "the request's notification")
    early = await decide(env.client, decided.id, "approve", by="bob")

    d = (await asyncio.wait_for(auto.result(), 60)).decision
    assert (d.approved, d.reason, d.value, d.decided_by) == (True, "auto_approved", "approve", "keel")
    assert webhook.events(auto.id) == ["requested", "auto_approved"]
    assert (await asyncio.wait_for(decided.result(), 60)).decision == early
    await asyncio.sleep(2.5)  # past the escalation's notify_after: nothing more was sent
    assert webhook.events(decided.id) == ["requested"]


async def test_c_a_failing_webhook_never_holds_up_a_decision(env, webhook, tmp_path):
    webhook.status = 503  # retried (with backoff) for seconds
    handle = await start_refund(env, RefundInput("14", str(tmp_path / "e.log"), webhook_url=webhook.url))
    await until(lambda: webhook.events(handle.id), "a first notification attempt")
    began = asyncio.get_running_loop().time()
    await decide(env.client, handle.id, "approve", by="alice")
    outcome = await asyncio.wait_for(handle.result(), 30)
    assert outcome.refunded
    assert asyncio.get_running_loop().time() - began < 3  # not after the notification's retries
    cancelled = [e async for e in handle.fetch_history_events()
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED]
    assert len(cancelled) == 1  # the moot "requested" notification


# --- (d) the CLI -----------------------------------------------------------------------------------


async def keel_cli(settings: KeelSettings, *args: str) -> tuple[int, str, str]:
    """``keel ARGS`` in a subprocess, without blocking this loop (the worker runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel.cli", *args,
        cwd=ROOT, env={**os.environ, **settings_env(settings)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def until_listed(settings: KeelSettings, tenant: str, ids: set[str], timeout: float = 20) -> dict:
    """``keel approvals --tenant --json`` once it lists exactly ``ids`` (visibility lags a little)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        code, out, err = await keel_cli(settings, "approvals", "--tenant", tenant, "--json")
        assert code == 0, err
        listed = json.loads(out)
        if {a["workflow_id"] for a in listed["approvals"]} == ids:
            return listed
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"keel approvals listed {listed}, expected {ids}")
        await asyncio.sleep(0.5)


async def test_d_keel_approvals_approve_and_reject_from_the_command_line(env, tmp_path):
    tenant = f"cli{uuid.uuid4().hex[:6]}"
    first = await start_refund(env, RefundInput("21", str(tmp_path / "e.log"), tenant=tenant, sla_seconds=3600))
    second = await start_refund(env, RefundInput("22", str(tmp_path / "e.log"), tenant=tenant))
    await wait_pending(env.client, first.id)
    await wait_pending(env.client, second.id)

    listed = await until_listed(env.settings, tenant, {first.id, second.id})
    row = next(a for a in listed["approvals"] if a["workflow_id"] == first.id)
    assert row["approval_id"] == "refund-21" and row["request"]["approvers"] == ["alice", "bob"]
    assert row["request"]["tenant"] == tenant and row["sla_at"]
    code, out, err = await keel_cli(env.settings, "approvals", "--tenant", tenant)
    assert code == 0, err
    assert f"{first.id}  refund-21  Refund order 21" in out and f"{second.id}  refund-22  Refund order 22" in out
    assert "approvers: alice, bob   allowed: approve, reject" in out and "SLA " in out

    # Not an approver: refused, exit code 1, a clear message, and the run is still pending.
    code, out, err = await keel_cli(env.settings, "approve", first.id, "--as", "mallory")
    assert code == 1 and "not accepted: 'mallory' may not decide approval 'refund-21'" in err, (code, out, err)
    assert len(await query_pending(env.client, first.id)) == 1

    code, out, err = await keel_cli(env.settings, "approve", first.id, "--comment", "fine", "--approval", "refund-21", "--as", "alice")
    assert code == 0, err
    assert "approval 'refund-21' approved (approve) by alice" in out
    d = (await asyncio.wait_for(first.result(), 30)).decision
    assert (d.approved, d.decided_by, d.comment) == (True, "alice", "fine")

    code, out, err = await keel_cli(env.settings, "reject", second.id, "--reason", "order was cancelled", "--as", "bob")
    assert code == 0, err
    assert "approval 'refund-22' rejected (reject) by bob" in out
    d = (await asyncio.wait_for(second.result(), 30)).decision
    assert (d.approved, d.decided_by, d.comment) == (False, "bob", "order was cancelled")

    await until_listed(env.settings, tenant, set())
    code, out, err = await keel_cli(env.settings, "approvals", "--tenant", tenant)
    assert code == 0 and f"no pending approvals for tenant {tenant!r}" in out, (out, err)
    code, out, err = await keel_cli(env.settings, "reject", second.id, "--as", "bob")
    assert code == 2 and "--reason" in err  # the reason is required


async def test_d_default_decider_is_the_user(env, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "bob")
    handle = await start_refund(env, RefundInput("23", str(tmp_path / "e.log")))
    await wait_pending(env.client, handle.id)
    code, out, err = await keel_cli(env.settings, "approve", handle.id)
    assert code == 0, err
    assert (await asyncio.wait_for(handle.result(), 30)).decision.decided_by == "bob"
