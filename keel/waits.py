"""Durable waits for workflow authors: an event or a deadline, whichever comes first.

:func:`wait_for_event` waits for a signal named like the event, which it handles itself (the
handler is registered on first use, so the workflow declares none), or for a timer; both live in
Temporal, so a wait of three days survives worker and server restarts. :func:`sleep` is a thin,
documented ``workflow.sleep``. Anyone with a Temporal client sends the event::

    await client.get_workflow_handle(ticket_id).signal("customer_replied", {"text": "Thanks!"})

Events are kept in arrival order and each wait takes the oldest one not taken yet: an event that
arrives before the workflow starts waiting for it is not lost, and is not seen twice.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from temporalio import workflow
from temporalio.common import RawValue

from keel.errors import InvalidRequest

T = TypeVar("T")

__all__ = ["EventResult", "sleep", "wait_for_event"]

_EVENTS_ATTR = "_keel_events"


@dataclass
class EventResult(Generic[T]):
    """What :func:`wait_for_event` saw: the event (``received``, with its ``payload``) or the
    deadline (``timed_out``).

    :param name: the event (signal) name.
    :param received: True if the event came before the deadline.
    :param payload: the event's argument (None without one, or when the wait timed out),
        converted to the wait's ``payload_type`` when it has one.
    :param received_at: the workflow time at which the event was handled.

    >>> from datetime import datetime, timezone
    >>> replied = EventResult("customer_replied", True, {"text": "Fixed, thanks"},
    ...                       datetime(2025, 1, 3, tzinfo=timezone.utc))
    >>> replied.timed_out, replied.payload["text"]
    (False, 'Fixed, thanks')
    >>> EventResult("customer_replied", received=False).timed_out
    True
    """

    name: str
    received: bool
    payload: T | None = None
    received_at: datetime | None = None

    @property
    def timed_out(self) -> bool:
        """True when the deadline came first."""
        return not self.received


class _Inbox:
    """The events of one name that arrived and were not taken yet (this run only)."""

    def __init__(self) -> None:
        self.events: collections.deque[tuple[RawValue | None, datetime]] = collections.deque()


def _inbox(name: str) -> _Inbox:
    instance = workflow.instance()
    inboxes: dict[str, _Inbox] | None = getattr(instance, _EVENTS_ATTR, None)
    if inboxes is None:
        inboxes = {}
        setattr(instance, _EVENTS_ATTR, inboxes)
    inbox = inboxes.get(name)
    if inbox is None:
        if workflow.get_signal_handler(name) is not None:
            raise InvalidRequest(f"the workflow already handles signal {name!r}: wait_for_event cannot take it over")
        inbox = inboxes[name] = _Inbox()

        # RawValue: the payload is decoded when a wait takes it, to the type that wait asks for.
        # An event carries at most one argument.
        def receive(payload: RawValue = None) -> None:  # type: ignore[assignment]
            inbox.events.append((payload, workflow.now()))

        # Signals that arrived before this point were buffered by the SDK and are delivered now.
        workflow.set_signal_handler(name, receive)
    return inbox


async def wait_for_event(
    name: str,
    *,
    timeout: timedelta | None = None,
    payload_type: type[T] | None = None,
    summary: str | None = None,
) -> EventResult[T]:
    """Wait durably for the event ``name`` (a signal of that name) or for ``timeout``.

    :param name: the signal's name; the workflow must not handle it itself.
    :param timeout: how long to wait (a durable Temporal timer); None waits as long as it takes.
        A timeout of zero only takes an event that has already arrived.
    :param payload_type: convert the event's argument to this type (a dataclass, a pydantic
        model...), with the client's data converter; None gives it as decoded JSON.
    :param summary: the timer's label in the Temporal UI (default: ``wait for <name>``).
    :raises InvalidRequest: outside a workflow, with a negative timeout, or when the workflow
        handles that signal itself.

    In a workflow::

        replied = await keel.wait_for_event("customer_replied", timeout=timedelta(days=3))
        if replied.timed_out:
            await send_follow_up(ticket)

    Outside a workflow there is nothing to wait for:

    >>> import asyncio
    >>> from datetime import timedelta
    >>> asyncio.run(wait_for_event("customer_replied", timeout=timedelta(days=3)))
    Traceback (most recent call last):
    keel.errors.InvalidRequest: wait_for_event('customer_replied') waits for a signal to a workflow: call it in workflow code
    """
    if not workflow.in_workflow():
        raise InvalidRequest(f"wait_for_event({name!r}) waits for a signal to a workflow: call it in workflow code")
    if not name:
        raise InvalidRequest("wait_for_event needs an event name")
    if timeout is not None and timeout < timedelta(0):
        raise InvalidRequest(f"wait_for_event({name!r}): timeout must not be negative ({timeout})")
    inbox = _inbox(name)
    deadline = None if timeout is None else workflow.now() + timeout
    while not inbox.events:
        if deadline is None:
            await workflow.wait_condition(lambda: bool(inbox.events))
            continue
        remaining = deadline - workflow.now()
        if remaining > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: bool(inbox.events), timeout=remaining, timeout_summary=summary or f"wait for {name}"
                )
                continue
            except asyncio.TimeoutError:
                pass
        # Signal handlers run as tasks of the workflow's event loop: let those already delivered
        # (buffered before this wait registered the handler, or in this activation) run first.
        await asyncio.sleep(0)
        if not inbox.events:
            return EventResult(name, received=False)
    raw, received_at = inbox.events.popleft()
    payload: Any = None
    if raw is not None:
        payload = workflow.payload_converter().from_payload(raw.payload, payload_type)
    return EventResult(name, received=True, payload=payload, received_at=received_at)


async def sleep(duration: timedelta, *, summary: str | None = None) -> None:
    """Sleep ``duration``: a durable timer in a workflow (it survives restarts and costs nothing
    while it runs), ``asyncio.sleep`` outside one.

    :param summary: the timer's label in the Temporal UI.
    :raises InvalidRequest: for a negative duration.

    >>> import asyncio
    >>> from datetime import timedelta
    >>> asyncio.run(sleep(timedelta(milliseconds=10)))
    >>> asyncio.run(sleep(timedelta(seconds=-1)))
    Traceback (most recent call last):
    keel.errors.InvalidRequest: sleep: duration must not be negative (-1 day, 23:59:59)
    """
    if duration < timedelta(0):
        raise InvalidRequest(f"sleep: duration must not be negative ({duration})")
    if not workflow.in_workflow():
        await asyncio.sleep(duration.total_seconds())
        return
    await workflow.sleep(duration, summary=summary)
