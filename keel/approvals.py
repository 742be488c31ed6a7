"""Human approvals in any workflow: ``await keel.approval(...)`` waits durably for a person.

Inside a ``@workflow.defn``::

    decision = await keel.approval(
        "refund-42",
        request=ApprovalRequest("Refund $120 to order 42", approvers=["alice", "bob"]),
        sla=timedelta(hours=4),
        escalation=Escalation(notify_after=timedelta(hours=1), deadline=timedelta(hours=8), on_deadline="reject"),
    )
    if decision.approved:
        ...

The call handles everything itself (it registers its handlers on first use, like
:func:`keel.llm.complete`), so the workflow declares no handler:

* a **Temporal Update** ``keel_decide`` (:class:`DecideInput`) records a person's decision. Its
  validator rejects a caller who is not among the request's ``approvers``, a value not in
  ``allowed``, an unknown or already decided approval id: a rejected update changes nothing and
  never enters the run's history. Several approvals of one run are told apart by their id.
* a **query** ``keel_approvals`` lists the run's pending approvals (:class:`PendingApproval`).
* while any approval is pending the run carries the search attribute ``KeelApproval =
  "pending"`` (then ``"decided"``) and, if the request names one, ``KeelTenant``: the Temporal
  UI's filter ``KeelApproval = "pending"`` lists every run waiting for a person.
* the activity ``keel.approval_notify`` tells people: when the approval is requested, when the
  escalation's ``notify_after`` passes, when the SLA is breached and when the deadline decides
  automatically (a log line, and a JSON POST to the request's ``webhook_url`` or
  ``KEEL_APPROVAL_WEBHOOK_URL``). Notifications run beside the wait; one that keeps failing is
  logged, never fatal, and those still in flight when a person decides are cancelled.

Every time is counted from the call, with durable Temporal timers: a pending approval survives
worker and server restarts. Decide from the command line (``keel approve RUN_ID``, ``keel
reject RUN_ID --reason ...``, ``keel approvals``) or from code with :func:`decide` and
:func:`pending_approvals`:

>>> from keel.approvals import pending_query
>>> pending_query(tenant="acme")  # what `keel approvals --tenant acme` lists
'KeelApproval = "pending" AND ExecutionStatus = "Running" AND KeelTenant = "acme"'
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from keel.activities.approvals import NotifyInput, approval_notify
from keel.errors import InvalidRequest
from keel.options import StepOptions
from keel.search_attributes import KEEL_APPROVAL, KEEL_TENANT

__all__ = [
    "APPROVALS_QUERY",
    "DECIDE_UPDATE",
    "ApprovalDecision",
    "ApprovalRequest",
    "DecideInput",
    "DecisionRejected",
    "Escalation",
    "PendingApproval",
    "approval",
    "decide",
    "pending_approvals",
    "pending_query",
    "query_pending",
]

DECIDE_UPDATE = "keel_decide"
APPROVALS_QUERY = "keel_approvals"
AUTO_DECIDER = "keel"  # ``decided_by`` of a decision the deadline made
PENDING, DECIDED = "pending", "decided"

# Notifications: a few quick attempts; a webhook that refuses (4xx) is not asked again.
NOTIFY_OPTIONS = StepOptions(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=4,
        non_retryable_error_types=["WebhookRejected"],
    ),
)

DecisionReason = Literal["decided", "auto_approved", "auto_rejected"]


class DecisionRejected(InvalidRequest):
    """A decision the run refused, changing nothing: the caller may not decide, the value is not
    allowed, or no such approval is pending. Raised by :func:`decide` (and by the update's
    validator inside the run, as a rejected update of this type name).

    >>> raise DecisionRejected("'mallory' may not decide approval 'refund-42' (approvers: alice, bob)")
    Traceback (most recent call last):
    keel.approvals.DecisionRejected: 'mallory' may not decide approval 'refund-42' (approvers: alice, bob)
    """


def _positive(value: timedelta | None, what: str) -> None:
    if value is not None and value <= timedelta(0):
        raise InvalidRequest(f"{what} must be positive, not {value}")


@dataclass
class ApprovalRequest:
    """What a person is asked to decide, and who may decide it.

    :param summary: one line for the people asked (notifications, ``keel approvals``).
    :param approvers: who may decide (user names as the deciders give them: ``keel approve
        --as``, :func:`decide`'s ``by``); anyone else is rejected.
    :param allowed: the values a decision may take; anything else is rejected.
    :param approving: which of ``allowed`` mean "approved" (``ApprovalDecision.approved``).
    :param details: facts shown with the request (order, amount, link...).
    :param tenant: sets the run's ``KeelTenant`` search attribute, so ``keel approvals
        --tenant`` finds it.
    :param webhook_url: where notifications are POSTed (default: the worker's
        ``KEEL_APPROVAL_WEBHOOK_URL``, else they are only logged).

    >>> ApprovalRequest("Refund $120 to order 42", approvers=["alice", "bob"]).allowed
    ['approve', 'reject']
    >>> ApprovalRequest("Refund $120 to order 42", approvers=[])
    Traceback (most recent call last):
    keel.errors.InvalidRequest: an approval needs at least one approver
    """

    summary: str
    approvers: list[str]
    allowed: list[str] = field(default_factory=lambda: ["approve", "reject"])
    approving: list[str] = field(default_factory=lambda: ["approve"])
    details: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None
    webhook_url: str | None = None

    def __post_init__(self) -> None:
        if not self.summary.strip():
            raise InvalidRequest("an approval needs a summary")
        if not self.approvers or not all(a.strip() for a in self.approvers):
            raise InvalidRequest("an approval needs at least one approver" if not self.approvers else "an approver name is empty")
        if not self.allowed or not all(v.strip() for v in self.allowed):
            raise InvalidRequest("an approval needs at least one allowed value, none of them empty")
        if not self.approving or not set(self.approving) <= set(self.allowed):
            raise InvalidRequest(f"approving {self.approving} must be a non-empty part of allowed {self.allowed}")
        if self.tenant is not None and (not self.tenant or '"' in self.tenant):
            raise InvalidRequest(f"not a tenant name: {self.tenant!r}")

    @property
    def auto_approve_value(self) -> str:
        return self.approving[0]

    @property
    def auto_reject_value(self) -> str:
        return next((v for v in self.allowed if v not in self.approving), "reject")


@dataclass
class Escalation:
    """What happens when nobody decides: first a notification, then (optionally) an automatic
    decision. Durations count from the approval's request.

    :param notify_after: send the ``escalated`` notification (to ``notify``) this long after
        the request, if still pending.
    :param notify: who the escalation notifies (default: the approvers).
    :param deadline: decide automatically this long after the request.
    :param on_deadline: ``"reject"`` (the default) or ``"approve"``.

    >>> from datetime import timedelta
    >>> Escalation(notify_after=timedelta(hours=1), deadline=timedelta(hours=8)).on_deadline
    'reject'
    >>> Escalation(notify_after=timedelta(hours=9), deadline=timedelta(hours=8))
    Traceback (most recent call last):
    keel.errors.InvalidRequest: notify_after (9:00:00) must come before the deadline (8:00:00)
    """

    notify_after: timedelta | None = None
    notify: list[str] = field(default_factory=list)
    deadline: timedelta | None = None
    on_deadline: Literal["reject", "approve"] = "reject"

    def __post_init__(self) -> None:
        if self.notify_after is None and self.deadline is None:
            raise InvalidRequest("an Escalation needs notify_after, deadline or both")
        _positive(self.notify_after, "notify_after")
        _positive(self.deadline, "deadline")
        if self.notify_after is not None and self.deadline is not None and self.notify_after >= self.deadline:
            raise InvalidRequest(f"notify_after ({self.notify_after}) must come before the deadline ({self.deadline})")
        if self.on_deadline not in ("reject", "approve"):
            raise InvalidRequest(f"on_deadline must be 'reject' or 'approve', not {self.on_deadline!r}")


@dataclass
class ApprovalDecision:
    """How an approval ended: a person's decision or the deadline's.

    :param approved: the value is one of the request's ``approving`` values.
    :param value: the decided value (one of ``allowed``; the deadline uses the first
        approving / first other value).
    :param decided_by: the approver, or ``"keel"`` when the deadline decided.
    :param reason: ``"decided"`` (a person), ``"auto_approved"`` or ``"auto_rejected"``.
    :param comment: the decider's comment (``keel reject --reason`` puts its reason here).
    :param within_sla: decided before the SLA passed (True without an SLA).

    >>> from datetime import datetime, timezone
    >>> d = ApprovalDecision("refund-42", True, "approve", "alice", "decided",
    ...                      datetime(2025, 1, 1, 9, 30, tzinfo=timezone.utc), comment="ok")
    >>> d.approved, d.decided_by, d.within_sla
    (True, 'alice', True)
    """

    approval_id: str
    approved: bool
    value: str
    decided_by: str
    reason: DecisionReason
    decided_at: datetime
    comment: str = ""
    within_sla: bool = True


@dataclass
class DecideInput:
    """The argument of the ``keel_decide`` update.

    :param approval_id: which approval; None when the run has exactly one pending.
    """

    value: str
    by: str
    approval_id: str | None = None
    comment: str = ""


@dataclass
class PendingApproval:
    """One pending approval, as the ``keel_approvals`` query reports it."""

    workflow_id: str
    approval_id: str
    request: ApprovalRequest
    requested_at: datetime
    sla_at: datetime | None = None
    notify_at: datetime | None = None
    deadline_at: datetime | None = None
    on_deadline: str | None = None
    escalated: bool = False  # the escalation notification was sent
    overdue: bool = False  # the SLA passed


# --- inside the workflow ---------------------------------------------------------------------


class _Approval:
    def __init__(self, approval_id: str, request: ApprovalRequest, requested_at: datetime,
                 sla: timedelta | None, escalation: Escalation | None) -> None:
        self.id, self.request, self.requested_at = approval_id, request, requested_at
        self.sla_at = requested_at + sla if sla else None
        self.escalation = escalation
        self.notify_at = requested_at + escalation.notify_after if escalation and escalation.notify_after else None
        self.deadline_at = requested_at + escalation.deadline if escalation and escalation.deadline else None
        self.escalated = self.overdue = False
        self.decision: ApprovalDecision | None = None

    def pending(self) -> PendingApproval:
        return PendingApproval(
            workflow_id=workflow.info().workflow_id,
            approval_id=self.id,
            request=self.request,
            requested_at=self.requested_at,
            sla_at=self.sla_at,
            notify_at=self.notify_at,
            deadline_at=self.deadline_at,
            on_deadline=self.escalation.on_deadline if self.deadline_at else None,
            escalated=self.escalated,
            overdue=self.overdue,
        )

    def decide(self, value: str, by: str, reason: DecisionReason, comment: str = "") -> ApprovalDecision:
        now = workflow.now()
        self.decision = ApprovalDecision(
            approval_id=self.id,
            approved=value in self.request.approving,
            value=value,
            decided_by=by,
            reason=reason,
            decided_at=now,
            comment=comment,
            within_sla=self.sla_at is None or now <= self.sla_at,
        )
        return self.decision


class _Approvals:
    """Every approval of this run; its update and query handlers are registered once."""

    def __init__(self) -> None:
        self.all: dict[str, _Approval] = {}

    @property
    def pending(self) -> list[_Approval]:
        return [a for a in self.all.values() if a.decision is None]

    def resolve(self, d: DecideInput) -> _Approval:
        """The approval ``d`` decides, or :class:`DecisionRejected` (no state is changed)."""
        pending = self.pending
        if d.approval_id is None:
            if not pending:
                raise DecisionRejected("no approval is pending in this run")
            if len(pending) > 1:
                ids = ", ".join(a.id for a in pending)
                raise DecisionRejected(f"{len(pending)} approvals are pending ({ids}): name one")
            target = pending[0]
        else:
            target = self.all.get(d.approval_id)
            if target is None:
                ids = ", ".join(a.id for a in pending) or "none"
                raise DecisionRejected(f"no approval {d.approval_id!r} in this run (pending: {ids})")
        if target.decision is not None:
            done = target.decision
            raise DecisionRejected(f"approval {target.id!r} is already decided: {done.value} by {done.decided_by} ({done.reason})")
        if d.by not in target.request.approvers:
            raise DecisionRejected(
                f"{d.by!r} may not decide approval {target.id!r} (approvers: {', '.join(target.request.approvers)})"
            )
        if d.value not in target.request.allowed:
            raise DecisionRejected(
                f"{d.value!r} is not an allowed decision for approval {target.id!r} (allowed: {', '.join(target.request.allowed)})"
            )
        return target

    def mark(self, tenant: str | None) -> None:
        updates = [KEEL_APPROVAL.value_set(PENDING if self.pending else DECIDED)]
        if tenant:
            updates.append(KEEL_TENANT.value_set(tenant))
        workflow.upsert_search_attributes(updates)


_APPROVALS_ATTR = "_keel_approvals"


def _registry() -> _Approvals:
    """This run's approvals, created (with the update and query handlers) on first use."""
    instance = workflow.instance()
    registry: _Approvals | None = getattr(instance, _APPROVALS_ATTR, None)
    if registry is None:
        registry = _Approvals()
        setattr(instance, _APPROVALS_ATTR, registry)

        def validate(d: DecideInput) -> None:
            registry.resolve(d)  # raises: the update is rejected and leaves no trace in history

        def decide_update(d: DecideInput) -> ApprovalDecision:
            # Runs right after its validator, in the same step: no other decision can come between.
            target = registry.resolve(d)
            return target.decide(d.value, d.by, "decided", d.comment)

        def pending() -> list[PendingApproval]:
            return [a.pending() for a in registry.pending]

        workflow.set_update_handler(DECIDE_UPDATE, decide_update, validator=validate)
        workflow.set_query_handler(APPROVALS_QUERY, pending)
    return registry


async def approval(
    approval_id: str,
    *,
    request: ApprovalRequest,
    sla: timedelta | None = None,
    escalation: Escalation | None = None,
    options: StepOptions | None = None,
) -> ApprovalDecision:
    """Wait durably until a person decides ``request``, or the escalation's deadline does.

    :param approval_id: names this approval within the run (``keel approve --approval``); one
        run may hold several, pending together or one after another, each with its own id.
    :param request: the question, who may decide it, the allowed values.
    :param sla: when a decision is due: past it the approval is ``overdue``, the
        ``sla_breached`` notification goes out and the decision records ``within_sla=False``.
    :param escalation: notify after a while, then decide automatically at a deadline.
    :param options: the notification step's options (default: 30 s per attempt, 4 attempts).
    :raises InvalidRequest: outside a workflow, for an id already used in this run, for
        durations that are not positive (it fails the run: Keel's errors are workflow failures).

    In a workflow::

        decision = await keel.approval("refund-42", request=request, sla=timedelta(hours=4),
                                       escalation=Escalation(timedelta(hours=1), deadline=timedelta(hours=8)))

    Outside one there is nobody to ask:

    >>> import asyncio
    >>> request = ApprovalRequest("Refund $120 to order 42", approvers=["alice", "bob"])
    >>> asyncio.run(approval("refund-42", request=request))
    Traceback (most recent call last):
    keel.errors.InvalidRequest: approval('refund-42') waits for a person inside a workflow: call it in workflow code
    """
    if not workflow.in_workflow():
        raise InvalidRequest(f"approval({approval_id!r}) waits for a person inside a workflow: call it in workflow code")
    if not approval_id or not approval_id.strip():
        raise InvalidRequest("an approval needs an id")
    _positive(sla, "sla")
    registry = _registry()
    if approval_id in registry.all:
        raise InvalidRequest(f"approval id {approval_id!r} is already used in this run")
    entry = _Approval(approval_id, request, workflow.now(), sla, escalation)
    registry.all[approval_id] = entry
    registry.mark(request.tenant)
    opts = NOTIFY_OPTIONS.merged(options)
    notifications = [_notify(entry, "requested", request.approvers, opts)]

    milestones = [(at, kind) for at, kind in ((entry.notify_at, "escalate"), (entry.sla_at, "sla"), (entry.deadline_at, "deadline")) if at]
    for at, kind in sorted(milestones, key=lambda m: m[0]):  # stable: ties keep this order
        if await _decided_before(entry, at, kind):
            break
        if kind == "escalate":
            entry.escalated = True
            notifications.append(_notify(entry, "escalated", escalation.notify or request.approvers, opts))
        elif kind == "sla":
            entry.overdue = True
            notifications.append(_notify(entry, "sla_breached", [*request.approvers, *(escalation.notify if escalation else [])], opts))
        else:
            approve = escalation.on_deadline == "approve"
            value = request.auto_approve_value if approve else request.auto_reject_value
            decision = entry.decide(value, AUTO_DECIDER, "auto_approved" if approve else "auto_rejected",
                                    f"no decision within {escalation.deadline}")
            notifications.append(_notify(entry, decision.reason, request.approvers, opts))
            break
    if entry.decision is None:
        await workflow.wait_condition(lambda: entry.decision is not None)
    if not registry.pending:
        registry.mark(request.tenant)
    # Asking people to decide what is decided is moot: requests and reminders still being
    # delivered are cancelled. The deadline's own notification is delivered before returning,
    # so it is not abandoned if the run ends right after.
    stale = notifications if entry.decision.reason == "decided" else notifications[:-1]
    for task in stale:
        task.cancel()
    await asyncio.gather(*notifications, return_exceptions=True)
    return entry.decision


async def _decided_before(entry: _Approval, at: datetime, kind: str) -> bool:
    """True if a decision came before ``at`` (a durable timer), False when ``at`` passed first."""
    remaining = at - workflow.now()
    if entry.decision is not None or remaining <= timedelta(0):
        return entry.decision is not None
    try:
        await workflow.wait_condition(
            lambda: entry.decision is not None, timeout=remaining, timeout_summary=f"approval {entry.id}: {kind}"
        )
    except asyncio.TimeoutError:
        # A decision delivered in the same activation as the timer runs as a task: it wins.
        await asyncio.sleep(0)
    return entry.decision is not None


def _notify(entry: _Approval, event: str, recipients: list[str], opts: StepOptions) -> asyncio.Task:
    """Start one notification; it runs beside the wait and never fails the approval."""
    request = entry.request
    inp = NotifyInput(
        approval_id=entry.id,
        event=event,
        summary=request.summary,
        recipients=list(dict.fromkeys(recipients)),
        allowed=list(request.allowed),
        details=dict(request.details),
        tenant=request.tenant,
        webhook_url=request.webhook_url,
        deadline_at=entry.deadline_at.isoformat() if entry.deadline_at else None,
    )

    async def send() -> None:
        try:
            await workflow.execute_activity(
                approval_notify,
                inp,
                task_queue=opts.task_queue,
                start_to_close_timeout=opts.start_to_close_timeout,
                schedule_to_close_timeout=opts.schedule_to_close_timeout,
                retry_policy=opts.retry_policy,
            )
        except ActivityError as e:
            workflow.logger.warning("approval %s: the %s notification failed: %s", entry.id, event, e.cause or e)

    return asyncio.ensure_future(send())


# --- from a client ---------------------------------------------------------------------------


async def decide(
    client: Any,
    workflow_id: str,
    value: str,
    *,
    by: str,
    approval_id: str | None = None,
    comment: str = "",
    run_id: str | None = None,
) -> ApprovalDecision:
    """Decide an approval of the running workflow ``workflow_id`` (the ``keel_decide`` update).

    :param client: a Temporal ``Client`` with :class:`~keel.KeelPlugin` (its data converter).
    :param value: one of the request's ``allowed`` values ("approve", "reject"...).
    :param by: who decides: must be one of the request's approvers.
    :param approval_id: which approval; None when the run has exactly one pending.
    :raises DecisionRejected: the run refused the decision (nothing changed), or no running
        workflow has that id.
    """
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError, RPCStatusCode

    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        return await handle.execute_update(
            DECIDE_UPDATE, DecideInput(value, by, approval_id, comment), result_type=ApprovalDecision
        )
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.type == DecisionRejected.__name__:
            raise DecisionRejected(cause.message) from None
        if isinstance(cause, ApplicationError) and DECIDE_UPDATE in (cause.message or ""):
            raise DecisionRejected(f"workflow {workflow_id} is not waiting for an approval") from None
        raise
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise DecisionRejected(f"no running workflow {workflow_id}: {e.message}") from None
        raise


def pending_query(tenant: str | None = None) -> str:
    """The visibility query of runs with a pending approval (of ``tenant``)."""
    query = f'{KEEL_APPROVAL.name} = "{PENDING}" AND ExecutionStatus = "Running"'
    if tenant is not None:
        if not tenant or '"' in tenant:
            raise InvalidRequest(f"not a tenant name: {tenant!r}")
        query += f' AND {KEEL_TENANT.name} = "{tenant}"'
    return query


async def pending_approvals(client: Any, *, tenant: str | None = None) -> list[PendingApproval]:
    """Every pending approval (of ``tenant``): runs found by their ``KeelApproval`` search
    attribute, then asked with the ``keel_approvals`` query (a run whose worker does not answer
    is left out). The list lags a decision by the visibility store's delay (about a second)."""
    out: list[PendingApproval] = []
    async for run in client.list_workflows(pending_query(tenant)):
        try:
            out.extend(await query_pending(client, run.id, run.run_id))
        except Exception as e:  # no worker for the run right now: it stays pending, unlisted
            logging.getLogger(__name__).info("approvals of %s unavailable: %s", run.id, e)
    return out


async def query_pending(
    client: Any, workflow_id: str, run_id: str | None = None, *, timeout: timedelta = timedelta(seconds=10)
) -> list[PendingApproval]:
    """The pending approvals of one run (the ``keel_approvals`` query; a worker answers it)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    return await handle.query(APPROVALS_QUERY, result_type=list[PendingApproval], rpc_timeout=timeout)
