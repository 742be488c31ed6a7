"""A new user's project, exactly as the README's "Build your own pipeline" shows it: its own
``workflows/`` package and ``worker.py`` in a temp folder, using only the public API, on the real
dev server, against a loopback LLM. Run two ways: the project's own worker process, and
``keel up --app workflows`` (Keel's workers running the project's workflows)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from keel import KeelPlugin, KeelSettings, ProviderConfig, tenants
from keel.stack import Stack, settings_env
from keel.testing import FakeOpenAI, Step
from tests.conftest import CORPUS, ROOT

PRICE = dict(price_prompt_per_1k=0.01, price_completion_per_1k=0.02)


def readme_block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    [block] = [b for b in blocks if b.startswith(first_line + "\n")]
    return block


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "myapp"
    (folder / "workflows").mkdir(parents=True)
    (folder / "workflows" / "__init__.py").write_text(readme_block("# workflows/__init__.py"))
    (folder / "worker.py").write_text(readme_block("# worker.py"))
    return folder


def project_settings(tmp_path: Path, temporal_settings: KeelSettings, llm: FakeOpenAI) -> KeelSettings:
    name = uuid.uuid4().hex[:6]
    return KeelSettings(
        data_dir=tmp_path / "data",
        temporal_address=temporal_settings.temporal_address,
        temporal_ui_port=temporal_settings.temporal_ui_port,
        task_queue=f"user-{name}",
        index_task_queue=f"user-{name}-index",
        llm_start_local=False,
        providers=[ProviderConfig(name="loopback", base_url=llm.base_url, model="fake-model", **PRICE)],
    )


async def ask_and_check(client: Client, settings: KeelSettings, llm: FakeOpenAI, task_queue: str) -> None:
    summary = await client.execute_workflow(
        "IngestCorpus", settings.ingest_input("acme", [str(CORPUS / "history.txt")]),
        id=f"ingest-{uuid.uuid4().hex[:8]}", task_queue=settings.task_queue,
    )
    assert summary["indexed"] == 1, summary
    # The model's first reply cites a source it was not shown: the user's own check rejects it
    # and the repair re-ask (with that error) gets a valid one.
    llm.script(
        Step.ok(json.dumps({"answer": "In 1871.", "sources": ["S9"]})),
        Step.ok(json.dumps({"answer": "It was first lit in 1871.", "sources": ["S1"]})),
    )
    reply = await client.execute_workflow(
        "AskSupport", {"tenant": "acme", "text": "When was Greyhaven Point Light first lit? Mail jane.doe@example.com"},
        id=f"ask-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
    )
    assert reply["answer"] == "It was first lit in 1871."
    assert reply["sources"] and reply["sources"][0].endswith("history.txt")
    assert reply["attempts"] == 2 and reply["cost_usd"] > 0  # both requests counted, no handler written
    repair = llm.requests[-1]["messages"][-1]["content"]
    assert "S9 is not a source" in repair
    assert all("jane.doe@example.com" not in json.dumps(r) for r in llm.requests)


async def test_a_users_own_worker_runs_their_workflow(project, tmp_path, temporal_settings):
    with FakeOpenAI() as llm:
        settings = project_settings(tmp_path, temporal_settings, llm)
        tenants.create(settings, "acme")  # `keel tenant create acme`: its key, and the client's credential
        env = {**os.environ, **settings_env(settings)}
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            client = await Client.connect(settings.temporal_address, plugins=[KeelPlugin(settings)])
            await asyncio.wait_for(ask_and_check(client, settings, llm, "support"), 240)
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
        assert worker.returncode is not None


async def test_keel_up_runs_a_users_workflows(project, tmp_path, temporal_settings, monkeypatch):
    with FakeOpenAI() as llm:
        settings = project_settings(tmp_path, temporal_settings, llm)
        monkeypatch.chdir(project)  # `keel up --app workflows` is run from the project's folder
        stack = Stack(settings)
        stack.up(workers=1, apps=["workflows"], say=lambda _: None)
        try:
            client = await Client.connect(settings.temporal_address, plugins=[KeelPlugin(settings)])
            await asyncio.wait_for(ask_and_check(client, settings, llm, settings.task_queue), 240)
        finally:
            stack.down(say=lambda _: None)
