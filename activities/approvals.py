"""``keel.approval_notify``: tell people about a human approval (behind :func:`keel.approval`).

One activity, one event of one approval: ``requested``, ``escalated``, ``sla_breached``,
``auto_approved`` or ``auto_rejected``. It logs the event and, when a webhook URL is set (the
request's ``webhook_url``, else ``KEEL_APPROVAL_WEBHOOK_URL`` on the worker), POSTs it as JSON.

Idempotent: a retried attempt sends the same body with the same ``Idempotency-Key`` header
(workflow id, run id, approval id, event), so a receiver that honours the header notifies once.
A 4xx answer is not retried (the hook will not change its mind); 5xx and connection errors are.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

WEBHOOK_ENV = "KEEL_APPROVAL_WEBHOOK_URL"
WEBHOOK_TIMEOUT_SECONDS = 10.0


@dataclass
class NotifyInput:
    approval_id: str
    event: str  # requested | escalated | sla_breached | auto_approved | auto_rejected
    summary: str
    recipients: list[str]
    allowed: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None
    webhook_url: str | None = None
    deadline_at: str | None = None  # ISO time of the automatic decision, if any


@dataclass
class NotifyResult:
    idempotency_key: str
    webhook_status: int | None = None  # None: logged only (no webhook configured)


@activity.defn(name="keel.approval_notify")
async def approval_notify(inp: NotifyInput) -> NotifyResult:
    info = activity.info()
    key = f"{info.workflow_id}/{info.workflow_run_id}/{inp.approval_id}/{inp.event}"
    url = inp.webhook_url or os.environ.get(WEBHOOK_ENV) or None
    activity.logger.info(
        "approval %s: %s (%s) -> %s", inp.event, inp.approval_id, inp.summary, ", ".join(inp.recipients) or "-"
    )
    if not url:
        return NotifyResult(idempotency_key=key)
    import httpx

    body = {
        **asdict(inp),
        "workflow_id": info.workflow_id,
        "run_id": info.workflow_run_id,
        "ui_url": _ui_url(info.workflow_id),
    }
    body.pop("webhook_url")
    try:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as http:
            response = await http.post(url, json=body, headers={"Idempotency-Key": key})
    except httpx.HTTPError as e:
        raise ApplicationError(f"approval webhook {url} unreachable: {e}", type="WebhookUnavailable") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise ApplicationError(f"approval webhook {url} answered {response.status_code}", type="WebhookUnavailable")
    if response.status_code >= 400:
        raise ApplicationError(
            f"approval webhook {url} refused the notification ({response.status_code})",
            type="WebhookRejected",
            non_retryable=True,
        )
    return NotifyResult(idempotency_key=key, webhook_status=response.status_code)


def _ui_url(workflow_id: str) -> str | None:
    try:
        from keel.activities._runtime import runtime

        return runtime().settings.run_ui_url(workflow_id)
    except Exception:  # a link is a courtesy: never fail a notification for it
        return None


APPROVAL_ACTIVITIES = [approval_notify]
