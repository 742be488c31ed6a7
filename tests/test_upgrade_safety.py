"""Safe upgrades: an incompatible workflow change is caught by replay, the same change behind
``workflow.patched`` is not; ``keel replay`` says so for a live run.

A released version's recorded history (tests/histories/0.4.0, never overwritten) is replayed
against deliberately altered copies of ``IngestDocument`` defined here (same workflow name):
one runs an extra step, one reorders two steps. Unversioned, each fails replay with a
nondeterminism error, which is what a worker would hit on a running workflow after a careless
deploy. Versioned with ``workflow.patched(...)``, old histories keep their old path and replay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from keel import KeelPlugin, KeelSettings, steps
from keel.errors import failure_reason
from keel.plugin import keel_workflows
from keel.workflows.ingest import IngestDocumentInput, IngestDocumentOutput, IngestSettings
from keel.types import EmbeddingSpec

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "histories" / "0.4.0" / "IngestDocument.json"


def _finish(inp: IngestDocumentInput, scrubbed, chunks, vectors) -> IngestDocumentOutput:
    used = IngestSettings(chunk=chunks.spec, pii=scrubbed.pii_policy, embedding=EmbeddingSpec(vectors.model))
    return IngestDocumentOutput(inp.document.document_id, inp.document.path, chunks.count, scrubbed.pii_counts, used)


async def _index_and_discard(inp: IngestDocumentInput, elements, chunks, vectors) -> None:
    doc = inp.document
    await steps.index_document(
        inp.tenant, doc.document_id, chunks, vectors,
        source=doc.path, version=doc.indexed_version, tags=doc.tags, date=doc.date, readers=doc.readers,
    )
    if inp.settings.raw_retention == "delete" and workflow.patched("keel-discard-raw"):
        await steps.discard([doc.content_hash, elements.key])


async def _detect_language(doc) -> None:
    # A new step some release adds after partitioning (an activity no worker needs to serve
    # for replay: replay never runs activities).
    await workflow.execute_activity("keel.detect_language", doc.path, start_to_close_timeout=timedelta(seconds=30))


def _fail_typed(e: ActivityError):
    error_type, message = failure_reason(e)
    raise ApplicationError(message, type=error_type, non_retryable=True) from e


@workflow.defn(name="IngestDocument", sandboxed=False)
class ExtraStepUnversioned:
    """0.4.0's IngestDocument plus a step after partition, deployed as is."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        doc, s = inp.document, inp.settings
        try:
            elements = await steps.partition(doc.content_hash, filename=doc.path)
            await _detect_language(doc)
            scrubbed = await steps.scrub_pii(elements, policy=s.pii)
            chunks = await steps.chunk(scrubbed, spec=s.chunk)
            vectors = await steps.embed(chunks, spec=s.embedding)
            await _index_and_discard(inp, elements, chunks, vectors)
        except ActivityError as e:
            _fail_typed(e)
        return _finish(inp, scrubbed, chunks, vectors)


@workflow.defn(name="IngestDocument", sandboxed=False)
class ExtraStepPatched:
    """The same new step, behind ``workflow.patched``: runs started before it skip it."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        doc, s = inp.document, inp.settings
        try:
            elements = await steps.partition(doc.content_hash, filename=doc.path)
            if workflow.patched("keel-detect-language"):
                await _detect_language(doc)
            scrubbed = await steps.scrub_pii(elements, policy=s.pii)
            chunks = await steps.chunk(scrubbed, spec=s.chunk)
            vectors = await steps.embed(chunks, spec=s.embedding)
            await _index_and_discard(inp, elements, chunks, vectors)
        except ActivityError as e:
            _fail_typed(e)
        return _finish(inp, scrubbed, chunks, vectors)


@workflow.defn(name="IngestDocument", sandboxed=False)
class ReorderedUnversioned:
    """Chunk before scrubbing (then scrub the chunks' elements): two steps swapped."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        doc, s = inp.document, inp.settings
        try:
            elements = await steps.partition(doc.content_hash, filename=doc.path)
            await steps.chunk(elements, spec=s.chunk)
            scrubbed = await steps.scrub_pii(elements, policy=s.pii)
            chunks = await steps.chunk(scrubbed, spec=s.chunk)
            vectors = await steps.embed(chunks, spec=s.embedding)
            await _index_and_discard(inp, elements, chunks, vectors)
        except ActivityError as e:
            _fail_typed(e)
        return _finish(inp, scrubbed, chunks, vectors)


@workflow.defn(name="IngestDocument", sandboxed=False)
class ReorderedPatched:
    """The same reordering, versioned: old runs keep the old order."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        doc, s = inp.document, inp.settings
        try:
            elements = await steps.partition(doc.content_hash, filename=doc.path)
            if workflow.patched("keel-chunk-before-scrub"):
                await steps.chunk(elements, spec=s.chunk)
            scrubbed = await steps.scrub_pii(elements, policy=s.pii)
            chunks = await steps.chunk(scrubbed, spec=s.chunk)
            vectors = await steps.embed(chunks, spec=s.embedding)
            await _index_and_discard(inp, elements, chunks, vectors)
        except ActivityError as e:
            _fail_typed(e)
        return _finish(inp, scrubbed, chunks, vectors)


def plugin_with(settings: KeelSettings, replacement: type) -> KeelPlugin:
    """Keel's plugin with its IngestDocument replaced by ``replacement`` (the "new release")."""
    plugin = KeelPlugin(settings)  # the real class, imported above
    plugin.workflows = [w for w in keel_workflows() if w.__name__ != "IngestDocument"]
    return plugin


def recorded_replayer(replacement: type) -> Replayer:
    # As tests/test_replay.py: the recording's queues, payloads recorded in clear.
    settings = KeelSettings(task_queue="histories", index_task_queue="histories-index", encryption=False)
    return Replayer(workflows=[replacement], plugins=[plugin_with(settings, replacement)])


def recorded_history() -> WorkflowHistory:
    return WorkflowHistory.from_json("ingest-doc-0.4.0", RECORDED.read_text())


async def test_the_recorded_history_replays_against_the_current_code():
    settings = KeelSettings(task_queue="histories", index_task_queue="histories-index", encryption=False)
    result = await Replayer(workflows=[], plugins=[KeelPlugin(settings)]).replay_workflow(
        recorded_history(), raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure


@pytest.mark.parametrize("changed", [ExtraStepUnversioned, ReorderedUnversioned], ids=lambda c: c.__name__)
async def test_an_unversioned_change_fails_replay_with_a_nondeterminism_error(changed):
    with pytest.raises(NondeterminismError) as err:
        await recorded_replayer(changed).replay_workflow(recorded_history())
    # The error names the step that no longer matches the recorded one.
    assert "keel.scrub_elements" in str(err.value) or "keel.detect_language" in str(err.value), str(err.value)


@pytest.mark.parametrize("changed", [ExtraStepPatched, ReorderedPatched], ids=lambda c: c.__name__)
async def test_the_same_change_behind_workflow_patched_replays(changed):
    result = await recorded_replayer(changed).replay_workflow(recorded_history(), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


# --- keel replay on a live run --------------------------------------------------------------


@workflow.defn(name="IngestDocument", sandboxed=False)
class FirstStepUnversioned:
    """A new step before partitioning, deployed as is."""

    @workflow.run
    async def run(self, inp: IngestDocumentInput) -> IngestDocumentOutput:
        await _detect_language(inp.document)
        raise AssertionError("replay stops at the first command")


@pytest.fixture(scope="module")
async def live_document_run(keel, tmp_path_factory):
    """An IngestDocument run of the test deployment (real worker, encrypted payloads) that
    partitions a document and fails typed: a real history without the worker's model warm-up."""
    folder = tmp_path_factory.mktemp("upgrade-doc")
    (folder / "note.xyz").write_text("The lighthouse keeper logs the fog horn every evening.")
    summary = await keel.ingest([folder], f"upgrade{os.getpid()}")
    assert (summary.total, summary.failed) == (1, 1), summary
    workflow_id = summary.failures[0].workflow_id
    desc = await keel.client.get_workflow_handle(workflow_id).describe()
    return workflow_id, desc.run_id


def keel_cli(settings: KeelSettings, *argv: str) -> subprocess.CompletedProcess:
    from keel.stack import settings_env

    env = {**os.environ, **settings_env(settings), "SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "keel.cli", *argv], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


async def test_keel_replay_says_a_live_run_is_compatible(keel, live_document_run):
    workflow_id, run_id = live_document_run
    done = keel_cli(keel.settings, "replay", workflow_id, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["compatible"] is True and out["error"] is None
    assert (out["workflow_id"], out["run_id"], out["workflow_type"]) == (workflow_id, run_id, "IngestDocument")
    assert out["events"] >= 8  # started, a workflow task, the partition step, its failure, the run's


async def test_keel_replay_fails_with_the_nondeterminism_message_after_an_incompatible_change(
    keel, live_document_run, monkeypatch, capsys
):
    """The same command, in-process, with an unversioned change deployed in place of IngestDocument."""
    import keel.plugin as keel_plugin
    from keel import ops

    workflow_id, run_id = live_document_run
    real = keel_plugin.KeelPlugin
    monkeypatch.setattr(keel_plugin, "KeelPlugin", lambda settings: plugin_with(settings, FirstStepUnversioned))
    monkeypatch.setattr(ops, "_replay_workflows", lambda apps: [FirstStepUnversioned])
    try:
        code = await ops.run(["replay", workflow_id, "--run-id", run_id, "--json"], keel.settings)
    finally:
        monkeypatch.setattr(keel_plugin, "KeelPlugin", real)
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["compatible"] is False
    assert "NondeterminismError" in out["error"] and "keel.detect_language" in out["error"], out["error"]
    assert "keel.partition" in out["error"]  # what the recorded run did there
