"""``keel.wait_for_event`` and ``keel.sleep`` on the real Temporal dev server (the example project
``examples/followup`` shows them in a whole workflow, three days included)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType

from keel.testing import KeelTestEnv
from tests.approval_app import ACTIVITIES, WORKFLOWS, CollectNotes, Seen

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def until_timers(handle, count: int, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        timers = [e async for e in handle.fetch_history_events() if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
        if len(timers) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the run never started {count} timer(s)")


async def test_events_are_taken_in_order_once_each_and_deadlines_hold(temporal_settings, tmp_path):
    async with KeelTestEnv(WORKFLOWS, ACTIVITIES, address=temporal_settings.temporal_address, fake_llm=False,
                           data_dir=tmp_path) as env:
        handle = await env.client.start_workflow(
            CollectNotes.run, 30, id=f"notes-{uuid.uuid4().hex[:8]}", task_queue=env.task_queue,
            execution_timeout=timedelta(minutes=2), start_signal="note", start_signal_args=["before the wait"],
        )
        await until_timers(handle, 1)  # the third wait is waiting
        await handle.signal("note", "second")
        await handle.signal("note", "third")
        seen = await asyncio.wait_for(handle.result(), 30)
        timers = [e async for e in handle.fetch_history_events() if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    assert seen == [
        Seen(True, "before the wait"),  # sent with the start, before any handler existed
        Seen(False, None),  # nothing left: a zero timeout returns at once
        Seen(True, "second"),
        Seen(True, "third"),
        Seen(False, None),  # "other" never came
    ]
    # One durable timer per wait that had to wait, labelled for the UI; zero timeouts start none.
    codec = env.client.data_converter.payload_codec  # labels are sealed like every payload
    summaries = [(await codec.decode([e.user_metadata.summary]))[0].data.decode() for e in timers]
    assert summaries == ['"second note"', '"wait for other"', '"a nap"']
