"""Shared fixtures: a real Temporal dev server, real worker processes, a fake LLM on loopback.

Each ``KeelEnv`` is one isolated deployment on the shared dev server: its own data dir
(embedded Qdrant store, blobs), its own task queues and its own worker processes, started
with the same ``Stack`` code that ``keel up`` uses.
"""

from __future__ import annotations

import dataclasses

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from keel.offline import configure_offline

configure_offline()

from temporalio.client import Client, WorkflowHandle  # noqa: E402

from keel.config import KeelSettings  # noqa: E402
from keel.activities.index import IndexStatsOutput  # noqa: E402
from keel.plugin import KeelPlugin  # noqa: E402
from keel.stack import Stack  # noqa: E402
from keel.testing import DevServer, FakeOpenAI  # noqa: E402
from keel.workflows import AnswerQuestion, AskResult, IndexStats, IndexStatsInput, IngestCorpus, IngestSummary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"
SHARED_DATA = ROOT.parent / "shared" / "data"


def payloads_in(msg):
    """Every Payload inside a protobuf message (a history event), to decode or scan in place."""
    from google.protobuf.message import Message
    from temporalio.api.common.v1 import Payload

    if isinstance(msg, Payload):
        yield msg
        return
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if isinstance(value, Message):
            yield from payloads_in(value)
            continue
        for item in value.values() if hasattr(value, "values") else value:  # a map or a list
            if isinstance(item, Message):
                yield from payloads_in(item)


async def opened_history(client: Client, events) -> bytes:
    """The events as stored, with every payload opened by the client's codec (tenant keys):
    what an operator with the keys sees, for tests about what history holds."""
    codec = client.data_converter.payload_codec
    out = []
    for event in events:
        event = type(event).FromString(event.SerializeToString())
        for payload in list(payloads_in(event)):
            if codec is not None:
                payload.CopyFrom((await codec.decode([payload]))[0])
        out.append(event.SerializeToString())
    return b"".join(out)


@dataclass
class KeelEnv:
    settings: KeelSettings
    stack: Stack
    client: Client

    def workflow_id(self, kind: str) -> str:
        return f"test-{kind}-{uuid.uuid4().hex[:10]}"

    async def start_ingest(
        self, paths: list[Path | str], tenant: str, documents_per_run: int | None = None, **metadata
    ) -> WorkflowHandle:
        inp = self.settings.ingest_input(tenant, [str(p) for p in paths], **metadata)
        inp.documents_per_run = documents_per_run or inp.documents_per_run
        return await self.client.start_workflow(
            IngestCorpus.run, inp, id=self.workflow_id("ingest"), task_queue=self.settings.task_queue
        )

    async def ingest(self, paths: list[Path | str], tenant: str, **metadata) -> IngestSummary:
        return await (await self.start_ingest(paths, tenant, **metadata)).result()

    async def ask(self, question: str, tenant: str, filters=None, **overrides) -> tuple[AskResult, WorkflowHandle]:
        handle = await self.client.start_workflow(
            AnswerQuestion.run,
            dataclasses.replace(self.settings.ask_input(tenant, question, filters=filters), **overrides),
            id=self.workflow_id("ask"),
            task_queue=self.settings.index_task_queue,  # as `keel ask` does: the search runs locally
        )
        return await handle.result(), handle

    async def stats(self, tenant: str) -> IndexStatsOutput:
        return await self.client.execute_workflow(
            IndexStats.run,
            IndexStatsInput(tenant=tenant),
            id=self.workflow_id("stats"),
            task_queue=self.settings.task_queue,
        )


@pytest.fixture(scope="session")
def temporal_settings(tmp_path_factory) -> KeelSettings:
    with DevServer(tmp_path_factory.mktemp("temporal")) as server:
        yield server.settings


@pytest.fixture(scope="session")
def fake_llm() -> FakeOpenAI:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_fake_llm(request):
    # Scripted steps left over by one test must not leak into the next.
    if "fake_llm" in request.fixturenames:
        request.getfixturevalue("fake_llm").clear()
    yield


async def start_env(tmp: Path, temporal_settings: KeelSettings, name: str, *, workers: int = 1, **settings) -> KeelEnv:
    settings.setdefault("codec_start_local", False)  # tests/test_codec_server.py covers it
    s = KeelSettings(
        data_dir=tmp,
        temporal_address=temporal_settings.temporal_address,
        temporal_ui_port=temporal_settings.temporal_ui_port,
        task_queue=f"keel-{name}",
        index_task_queue=f"keel-{name}-index",
        **settings,
    )
    stack = Stack(s)
    stack.up(workers=workers, say=lambda _: None)
    client = await Client.connect(s.temporal_address, plugins=[KeelPlugin(s)])
    return KeelEnv(settings=s, stack=stack, client=client)


@pytest.fixture(scope="session")
async def keel(tmp_path_factory, temporal_settings, fake_llm) -> KeelEnv:
    """The main test deployment: one worker owning the embedded index, LLM = the fake server."""
    env = await start_env(
        tmp_path_factory.mktemp("keel"),
        temporal_settings,
        "main",
        llm_base_url=fake_llm.base_url,
        llm_start_local=False,
        llm_timeout_seconds=5,
    )
    yield env
    env.stack.down(say=lambda _: None)


@pytest.fixture(scope="session")
def fake_providers():
    """Two fault-injecting providers on loopback: "primary" and "fallback" (served over
    Anthropic's Messages protocol, so the adapter runs end to end)."""
    with FakeOpenAI(model="primary-model") as primary, FakeOpenAI(model="fallback-model") as fallback:
        yield primary, fallback


@pytest.fixture(scope="session")
async def chain_keel(tmp_path_factory, temporal_settings, fake_providers) -> KeelEnv:
    """A deployment with a two-provider chain, a tenant with a budget, and the answer cache on."""
    from keel.llm.providers import ProviderConfig

    primary, fallback = fake_providers
    env = await start_env(
        tmp_path_factory.mktemp("chain"),
        temporal_settings,
        "chain",
        llm_start_local=False,
        providers=[
            ProviderConfig(
                name="primary", base_url=primary.base_url, model="primary-model", timeout_seconds=1.5,
                max_attempts=2, price_prompt_per_1k=0.01, price_completion_per_1k=0.03,
                breaker_failures=3, breaker_cooldown_seconds=3, max_retry_after_seconds=10,
            ),
            ProviderConfig(
                name="fallback", kind="anthropic", base_url=fallback.base_url, model="fallback-model",
                timeout_seconds=5, price_prompt_per_1k=0.0001, price_completion_per_1k=0.0002, budget_fallback=True,
            ),
        ],
        tenant_budgets={"frugal": 0.001, "chain": 1000.0},
        cache_enabled=True,
    )
    yield env
    env.stack.down(say=lambda _: None)
