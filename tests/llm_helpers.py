"""Helpers shared by the LLM-chain and cache tests (the deployment is ``chain_keel`` in conftest)."""

from __future__ import annotations

import asyncio
import dataclasses

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from keel.workflows import AskResult
from keel.llm.providers import provider_health_id
from keel.testing.fake_openai import FakeOpenAI, Step
from tests.conftest import CORPUS, KeelEnv
from keel.workflows import AnswerQuestion

QUESTION = "When was Greyhaven Point Light first lit?"
RUN_DEADLINE = 180


async def ask(env: KeelEnv, tenant: str, question: str = QUESTION, **overrides) -> tuple[AskResult, WorkflowHandle]:
    inp = dataclasses.replace(env.settings.ask_input(tenant, question), **{"use_cache": False, **overrides})
    handle = await env.client.start_workflow(
        AnswerQuestion.run, inp, id=env.workflow_id("ask"), task_queue=env.settings.task_queue
    )
    # A bound, so a run that never finishes fails the test instead of hanging it.
    return await asyncio.wait_for(handle.result(), RUN_DEADLINE), handle


async def ingest_history(env: KeelEnv, tenants: list[str]) -> None:
    summaries = await asyncio.gather(*(env.ingest([CORPUS / "history.txt"], tenant=t) for t in tenants))
    assert all(s.indexed + s.unchanged == 1 for s in summaries), summaries


async def reset_providers(env: KeelEnv, fakes: tuple[FakeOpenAI, ...]) -> None:
    """Forget scripted faults and close every circuit, so one test's outage does not leak."""
    for fake in fakes:
        fake.clear()
        fake.default = Step.answer()
    for name in ("primary", "fallback"):
        handle = env.client.get_workflow_handle(provider_health_id(env.settings.task_queue, name))
        try:
            await handle.signal("reset")
        except RPCError:
            pass  # never started: nothing to reset
