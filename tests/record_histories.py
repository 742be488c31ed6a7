"""Record one history per workflow type into ``tests/histories/<version>/``.

    python -m tests.record_histories

Self-contained: starts its own dev server, a deployment whose LLM is the fake server, and
records an ingest of the sample corpus, an ask, index stats, the breaker and the budget ledger.
Then a second deployment with a chain of two fault-injecting providers records the LLM paths
the happy path never takes: retries, a fall-over to the next provider, a repair re-ask, and an
answer-cache hit. Histories of a released version are never overwritten: this refuses to
write into a version folder that already holds them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import tempfile
import uuid
from pathlib import Path

from keel.config import KeelSettings
from keel.llm.types import HealthReport, ProviderHealthInput, ProviderHealthState
from keel.llm.providers import ProviderConfig, provider_health_id, tenant_budget_id
from keel.stack import Stack
from keel.testing.fake_openai import FakeOpenAI, Step
from tests.conftest import CORPUS, KeelEnv
from keel.workflows import AnswerQuestion, IndexStats, IndexStatsInput, IngestDocument, ProviderHealth

VERSION = importlib.metadata.version("keel")
OUT = Path(__file__).parent / "histories" / VERSION


async def main() -> None:
    from temporalio.client import Client

    from keel.plugin import KeelPlugin
    from keel.testing import DevServer

    if list(OUT.glob("*.json")):
        raise SystemExit(f"{OUT} already holds histories of release {VERSION}: they are never overwritten")
    with DevServer() as server, FakeOpenAI(model="history-model") as llm, tempfile.TemporaryDirectory() as tmp:
        settings = KeelSettings(
            data_dir=Path(tmp), temporal_address=server.address, llm_start_local=False, llm_base_url=llm.base_url,
            llm_model="history-model", task_queue="histories", index_task_queue="histories-index",
            tenant_budget_usd=1000.0,  # every tenant has a ledger, so the ask charges one
            # Histories test the workflows' determinism, which the payload codec has no part in;
            # recorded in clear, they replay without this recording's keys.
            encryption=False,
        )
        stack = Stack(settings)
        stack.up(workers=1, apps=["tests.agent_app"], say=print)  # with a user's agent and tools
        try:
            client = await Client.connect(settings.temporal_address, plugins=[KeelPlugin(settings)])
            await record(KeelEnv(settings=settings, stack=stack, client=client), llm)
        finally:
            stack.down(say=print)


async def record(env: KeelEnv, llm: FakeOpenAI) -> None:
    settings = env.settings
    tenant = f"histories-{uuid.uuid4().hex[:8]}"  # a fresh tenant, so every step really runs
    corpus_handle = await env.start_ingest([CORPUS / "history.txt", CORPUS / "membership.md"], tenant)
    await corpus_handle.result()
    _, ask_handle = await env.ask("How much does a family membership cost?", tenant)
    stats_handle = await env.client.start_workflow(
        IndexStats.run, IndexStatsInput(tenant=tenant), id=env.workflow_id("stats"), task_queue=settings.task_queue
    )
    await stats_handle.result()
    query = f"WorkflowType = '{IngestDocument.__name__}' AND WorkflowId STARTS_WITH 'ingest-doc-{tenant}-'"
    doc_id = [wf.id async for wf in env.client.list_workflows(query)][0]
    handles = {
        "IngestCorpus": corpus_handle,
        "IngestDocument": env.client.get_workflow_handle(doc_id),
        "AnswerQuestion": ask_handle,
        "IndexStats": stats_handle,
        # The ask charged the tenant's ledger.
        "TenantBudget": env.client.get_workflow_handle(tenant_budget_id(settings.task_queue, tenant)),
        "ProviderHealth": await provider_outage_and_recovery(env, settings),
    }
    handles["KeelAgent"] = await agent_history(env, llm)
    handles.update(await readers_and_judge(env, llm, tenant))
    handles.update(await eval_and_whatif(env, tenant, ask_handle.id))
    handles.update(await upload_and_erase(env, tenant))
    handles.update(await chain_histories(env.client, settings))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, handle in handles.items():
        history = await handle.fetch_history()
        (OUT / f"{name}.json").write_text(history.to_json())
        print(f"recorded {name}: {len(history.events)} events")


async def readers_and_judge(env: KeelEnv, llm: FakeOpenAI, tenant: str) -> dict:
    """0.5: new readers for an indexed document; an ask whose answer a judge vetoes once (the
    repair is judged supported); an ask whose answer is ungrounded twice (the floor answers)."""
    from keel.activities.ingest import document_id
    from keel.workflows import SetReaders
    from keel.workflows.permissions import SetReadersInput

    path = str(CORPUS / "membership.md")
    readers = await env.client.start_workflow(
        SetReaders.run, SetReadersInput(tenant, [document_id(tenant, path)], ["group:staff"]),
        id=env.workflow_id("readers"), task_queue=env.settings.task_queue,
    )
    assert (await readers.result()).chunks[0] > 0
    veto, supported = Step.ok('{"supported": false, "reason": "not stated"}'), Step.ok('{"supported": true}')
    llm.script(Step.answer(), veto, Step.answer(), supported)
    _, judged = await env.ask("When was Greyhaven Point Light first lit?", tenant, judge=True, use_cache=False)
    label = Step.ok('{"answer": "S1", "citations": ["S1"]}')
    llm.script(label, label)
    result, floor = await env.ask("When was Greyhaven Point Light first lit?", tenant, use_cache=False)
    assert result.degraded, result
    return {"SetReaders": readers, "AnswerQuestion.judged": judged, "AnswerQuestion.floor": floor}


async def eval_and_whatif(env: KeelEnv, tenant: str, ask_id: str) -> dict:
    """An answer evaluation of two configurations, and a what-if re-run of the recorded ask. Their
    children's ids derive from theirs, and a replay names a run by its file's name: so these runs
    are named so (the recording's dev server is fresh)."""
    import argparse
    import json

    from keel.evaluation import eval_input
    from keel.workflows.evaluate import EvaluateRun, WhatIfAsk, WhatIfInput

    folder = env.settings.data_dir / "eval-input"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "questions.jsonl").write_text(json.dumps(
        {"question": "How much does a family membership cost?", "facts": ["$75"], "sources": ["membership.md"]}
    ) + "\n")
    (folder / "a.toml").write_text('name = "a"\n')
    (folder / "b.toml").write_text('name = "b"\ntop_k = 3\n')
    args = argparse.Namespace(
        data=str(folder / "questions.jsonl"), config=[str(folder / "a.toml"), str(folder / "b.toml")],
        tenant=tenant, out=str(folder / "out"), limit=None, split="train",
    )
    evaluation = await env.client.start_workflow(
        EvaluateRun.run, eval_input(args, env.settings), id="EvaluateRun", task_queue=env.settings.task_queue
    )
    await evaluation.result()
    whatif = await env.client.start_workflow(
        WhatIfAsk.run, WhatIfInput(ask_id, {"top_k": "3"}), id="WhatIfAsk", task_queue=env.settings.task_queue
    )
    await whatif.result()
    return {"EvaluateRun": evaluation, "WhatIfAsk": whatif}


async def upload_and_erase(env: KeelEnv, tenant: str) -> dict:
    """An uploaded document, then the erasure of that tenant's data."""
    from keel import upload_document
    from keel.activities.index import EraseTenantInput
    from keel.workflows import EraseTenant

    upload = await upload_document(env.client, tenant, "tides.md", b"# Tides\n\nHigh tide is at 14:20.", settings=env.settings, wait=False)
    await upload.result()
    erase = await env.client.start_workflow(
        EraseTenant.run, EraseTenantInput(tenant), id=env.workflow_id("erase"), task_queue=env.settings.index_task_queue
    )
    await erase.result()
    return {"IngestUpload": upload, "EraseTenant": erase}


async def agent_history(env: KeelEnv, llm: FakeOpenAI):
    """An agent (tests.agent_app.SupportAgent) that calls a tool, then answers."""
    from tests.agent_app import AgentTask, SupportAgent

    llm.script(Step.tool_calls(("lookup", {"order": "7"})), Step.ok('{"summary": "order 7 shipped", "refunded": 0}'))
    result = await env.client.execute_workflow(
        SupportAgent.run, AgentTask("histories", "Where is order 7?"), id=env.workflow_id("agent"), task_queue=env.settings.task_queue
    )
    assert result.ok and len(result.tool_calls) == 1, result
    return env.client.get_workflow_handle(result.workflow_id)


async def provider_outage_and_recovery(env: KeelEnv, settings: KeelSettings):
    """A breaker that opens (two failures of a provider that trips at two) and closes again."""
    name = f"histories-{uuid.uuid4().hex[:6]}"
    failure = HealthReport(ok=False, error_type="LLMUnavailable", message="503", breaker_failures=2)
    handle = await env.client.start_workflow(
        ProviderHealth.run,
        ProviderHealthInput(state=ProviderHealthState(provider=name)),
        id=provider_health_id(settings.task_queue, name),
        task_queue=settings.task_queue,
        start_signal="report",
        start_signal_args=[failure],
    )
    await handle.signal(ProviderHealth.report, failure)
    assert (await handle.query(ProviderHealth.state)).open_until is not None
    await handle.signal(ProviderHealth.report, HealthReport(ok=True))
    await handle.signal(ProviderHealth.reset)
    assert (await handle.query(ProviderHealth.state)).consecutive_failures == 0
    return handle


async def chain_histories(client, settings: KeelSettings) -> dict:
    with FakeOpenAI(model="flaky-model") as flaky, FakeOpenAI(model="backup-model") as backup:
        queue = f"histories-chain-{uuid.uuid4().hex[:6]}"
        chain = KeelSettings(
            data_dir=settings.data_dir / queue,
            temporal_address=settings.temporal_address,
            temporal_namespace=settings.temporal_namespace,
            task_queue=queue,
            index_task_queue=f"{queue}-index",
            llm_start_local=False,
            encryption=False,
            cache_enabled=True,
            providers=[
                ProviderConfig(name="flaky", base_url=flaky.base_url, model="flaky-model", max_attempts=2,
                               timeout_seconds=5, price_prompt_per_1k=0.01, price_completion_per_1k=0.03),
                ProviderConfig(name="backup", kind="anthropic", base_url=backup.base_url, model="backup-model",
                               timeout_seconds=5),
            ],
        )
        stack = Stack(chain)
        stack.up(workers=1, say=print)
        try:
            env = KeelEnv(settings=chain, stack=stack, client=client)
            await env.ingest([CORPUS / "history.txt"], "histories")
            flaky.script(Step.server_error(503), Step.server_error(503))  # both attempts: fall over
            backup.script(Step.schema_violation(), Step.answer())  # the repair re-ask validates
            question = "When was Greyhaven Point Light first lit?"
            fallover, result = await ask(env, question)
            assert result.provider == "backup" and result.attempts == 3, result
            cached, result = await ask(env, question)
            assert result.cache == "exact", result
            return {"AnswerQuestion.fallover": fallover, "AnswerQuestion.cachehit": cached}
        finally:
            stack.down(say=print)


async def ask(env: KeelEnv, question: str):
    inp = dataclasses.replace(env.settings.ask_input("histories", question), use_cache=True)
    handle = await env.client.start_workflow(
        AnswerQuestion.run, inp, id=env.workflow_id("ask"), task_queue=env.settings.task_queue
    )
    return handle, await handle.result()


if __name__ == "__main__":
    asyncio.run(main())
