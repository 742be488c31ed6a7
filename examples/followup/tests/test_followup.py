"""The follow-up workflow on a real Temporal dev server, with a scripted fake LLM.

The three-day wait is an input (``FollowUpInput.wait``): on the plain dev server the tests wait
seconds; on a dev server with time skipping enabled, the real three days pass in a moment.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.testing import TimeSkipper, TimeSkippingConfig

from keel.testing import Step
from workflows import (
    ACTIVITIES,
    DEFAULT_WAIT,
    REPLIED,
    WORKFLOWS,
    CustomerReply,
    FollowUpInput,
    FollowUpTicket,
    Ticket,
)

EMAIL = "jane.doe@example.com"
# A workflow task that keeps failing is retried, not failed: without a limit a broken workflow
# would hang the test instead of failing it.
TIMEOUT = timedelta(minutes=2)
# With time skipping the run's clock is virtual, its execution timeout too: past the three days.
SKIPPED_TIMEOUT = timedelta(days=4)
DRAFT = "Hi again! Did the refund show up on your statement? Let us know if anything is still wrong."


def ticket() -> Ticket:
    return Ticket(
        tenant="acme",
        id=f"T-{uuid.uuid4().hex[:6]}",
        customer_email=EMAIL,
        subject="Charged twice for order 1042",
        last_agent_message="The duplicate charge has been refunded; it shows on your statement within 5 days.",
    )


async def start(client, task_queue: str, wait: timedelta, execution_timeout: timedelta = TIMEOUT, **kwargs):
    return await client.start_workflow(
        FollowUpTicket.run, FollowUpInput(ticket(), wait), id=f"followup-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue, execution_timeout=execution_timeout, **kwargs,
    )


async def timer_started(handle, timeout: float = 20) -> None:
    """Until the run is waiting on its timer: what comes next arrives during the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for e in handle.fetch_history_events():
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the run never started its timer")


def sent(outbox) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(outbox.glob("*.json"))] if outbox.exists() else []


async def test_a_reply_during_the_wait_ends_it_without_a_follow_up(followup_env, keel_fake_llm, outbox):
    async with followup_env() as env:
        handle = await start(env.client, env.task_queue, timedelta(minutes=1))
        await timer_started(handle)
        await handle.signal(REPLIED, CustomerReply("It shows now, thanks!"))
        result = await handle.result()
    assert (result.outcome, result.reply, result.message) == ("replied", "It shows now, thanks!", None)
    assert timedelta(0) < result.waited < timedelta(minutes=1)
    assert sent(outbox) == [] and keel_fake_llm.requests == []


async def test_a_reply_that_arrives_before_the_wait_is_not_lost(followup_env, keel_fake_llm, outbox):
    async with followup_env() as env:
        # Signal-with-start: the event is in the run before its code waits for it.
        handle = await start(
            env.client, env.task_queue, timedelta(minutes=1), start_signal=REPLIED, start_signal_args=[CustomerReply("Solved.")]
        )
        result = await handle.result()
    assert (result.outcome, result.reply, result.waited) == ("replied", "Solved.", timedelta(0))
    assert sent(outbox) == [] and keel_fake_llm.requests == []


async def test_no_reply_by_the_deadline_sends_one_drafted_follow_up(followup_env, keel_fake_llm, outbox):
    keel_fake_llm.script(Step.ok(json.dumps({"message": DRAFT})))
    async with followup_env() as env:
        handle = await start(env.client, env.task_queue, timedelta(seconds=2))
        result = await handle.result()
    assert (result.outcome, result.message, result.drafted_by) == ("followed_up", DRAFT, "llm")
    assert result.waited >= timedelta(seconds=2)
    [email] = sent(outbox)
    assert email["to"] == EMAIL and email["body"] == DRAFT and email["subject"] == "Re: Charged twice for order 1042"
    [request] = keel_fake_llm.requests
    assert "Charged twice for order 1042" in json.dumps(request) and EMAIL not in json.dumps(request)


async def test_invalid_drafts_fall_back_to_the_template(followup_env, keel_fake_llm, outbox):
    keel_fake_llm.script(Step.ok("no JSON here"), Step.ok('{"text": "wrong field"}'))
    async with followup_env() as env:
        result = await (await start(env.client, env.task_queue, timedelta(seconds=1))).result()
    assert (result.outcome, result.drafted_by) == ("followed_up", "template")
    assert result.llm_reason and len(keel_fake_llm.requests) == 2  # the draft and its one repair
    [email] = sent(outbox)
    assert email["body"] == result.message and "Charged twice for order 1042" in email["body"]


async def test_the_real_three_days_pass_with_time_skipping(time_skipping_server, keel_env, keel_fake_llm, outbox):
    keel_fake_llm.script(Step.ok(json.dumps({"message": DRAFT})))
    async with keel_env(WORKFLOWS, ACTIVITIES, address=time_skipping_server) as env:
        skipper = TimeSkipper(env.client)  # every run it starts skips its idle time
        began = time.monotonic()
        handle = await start(skipper.client, env.task_queue, DEFAULT_WAIT, SKIPPED_TIMEOUT)
        result = await asyncio.wait_for(handle.result(), 60)
        assert time.monotonic() - began < 60
    assert DEFAULT_WAIT == timedelta(days=3)
    assert (result.outcome, result.drafted_by) == ("followed_up", "llm")
    assert timedelta(days=3) <= result.waited < timedelta(days=3, minutes=1)  # virtual time
    assert len(sent(outbox)) == 1


async def test_a_reply_on_day_two_with_time_skipping(time_skipping_server, keel_env, keel_fake_llm, outbox):
    async with keel_env(WORKFLOWS, ACTIVITIES, address=time_skipping_server) as env:
        skipper = TimeSkipper(env.client, config=TimeSkippingConfig(enabled=False))
        handle = await start(skipper.client, env.task_queue, DEFAULT_WAIT, SKIPPED_TIMEOUT)
        await timer_started(handle)
        assert await asyncio.wait_for(skipper.fast_forward(handle, timedelta(days=2)), 60)  # two days, no reply
        await handle.signal(REPLIED, CustomerReply("Sorry for the delay: all good."))
        result = await asyncio.wait_for(handle.result(), 60)
    assert (result.outcome, result.reply) == ("replied", "Sorry for the delay: all good.")
    assert timedelta(days=2) <= result.waited < timedelta(days=2, minutes=1)
    assert sent(outbox) == [] and keel_fake_llm.requests == []
