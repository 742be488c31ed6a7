"""``keel runs --failed``, ``keel redrive`` and ``keel schedule`` against the real dev server.

Runs fail cheaply and typed: an ingest of folders that do not exist yet (its first step,
``keel.list_documents``, fails ``FileNotFoundError``) and an empty file (its document run fails
``EmptyDocument``). The commands run in-process through ``keel.ops.run`` (``keel.cli.main``
exits the process), with the test deployment's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid

import pytest
from temporalio.client import WorkflowFailureError

from keel import ops
from keel.workflows import IngestSummary

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def keel_json(settings, *argv: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # `schedule add NAME --json ACTION ...`: what follows the action word is the action's.
        argv = [*argv[:3], "--json", *argv[3:]] if argv[:2] == ("schedule", "add") else [*argv, "--json"]
        code = await ops.run(argv, settings)
    text = out.getvalue().strip()
    return code, (json.loads(text) if text else {})


async def eventually(check, what: str, timeout: float = 15.0):
    """Visibility is eventually consistent: poll ``check`` until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def test_failed_runs_are_listed_typed_and_redriven_exactly_once(keel, tmp_path):
    tenant = f"ops-{uuid.uuid4().hex[:8]}"
    late = [tmp_path / "late-a", tmp_path / "late-b"]  # folders not made yet
    failing = [await keel.start_ingest([p], tenant) for p in late]
    for handle in failing:
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")
    assert (await keel.ingest([tmp_path / "empty"], tenant)).failed == 1  # its document run failed

    async def failed_runs():
        _, out = await keel_json(keel.settings, "runs", "--failed", "--tenant", tenant, "--since", "1h")
        return out["runs"] if len(out["runs"]) == 3 else None

    runs = await eventually(failed_runs, "3 failed runs in visibility")
    by_type = {}
    for r in runs:
        by_type.setdefault(r["workflow_type"], []).append(r)
        assert r["status"] == "FAILED" and r["tenant"] == tenant
    corpus_runs = by_type["IngestCorpus"]
    assert {r["workflow_id"] for r in corpus_runs} == {h.id for h in failing}
    for r in corpus_runs:  # typed: the failure's type, its (decrypted) message, the step
        assert r["error_type"] == "FileNotFoundError" and r["step"] == "keel.list_documents"
        assert "no such file or folder" in r["message"] and "late-" in r["message"]
    [doc] = by_type["IngestDocument"]
    assert doc["error_type"] == "EmptyDocument" and doc["step"] == "keel.partition", doc

    # Filters: by type; another tenant sees none of them.
    _, out = await keel_json(keel.settings, "runs", "--failed", "--tenant", tenant, "--type", "IngestDocument")
    assert [r["workflow_id"] for r in out["runs"]] == [doc["workflow_id"]]
    _, out = await keel_json(keel.settings, "runs", "--failed", "--tenant", "someone-else", "--since", "1h")
    assert out["runs"] == []

    # The cause is fixed (the files now exist); a dry run starts nothing.
    for p in late:  # (empty: nothing to embed keeps this test fast; the schedule test indexes)
        p.mkdir()
    code, dry = await keel_json(keel.settings, "redrive", "--type", "IngestCorpus", "--tenant", tenant, "--dry-run")
    assert code == 0 and dry["would_start"] == 2 and dry["started"] == 0

    code, first = await keel_json(keel.settings, "redrive", "--type", "IngestCorpus", "--tenant", tenant, "--rate", "20")
    assert code == 0 and first["started"] == 2, first
    started = {r["workflow_id"]: r for r in first["runs"]}
    for handle in failing:
        r = started[handle.id]
        assert r["redrive_id"] == ops.redrive_id(handle.id, r["run_id"]) and r["redrive_id"].startswith(f"{handle.id}-redrive-")
        summary = await keel.client.get_workflow_handle(r["redrive_id"], run_id=r["new_run_id"], result_type=IngestSummary).result()
        assert (summary.total, summary.failed) == (0, 0)  # same input, now succeeds

    # Redriving again duplicates nothing: each failed run's redrive exists and completed.
    code, second = await keel_json(keel.settings, "redrive", "--type", "IngestCorpus", "--tenant", tenant)
    assert code == 0 and second["started"] == 0 and second["skipped"] == 2, second
    assert all("already redriven" in r["reason"] for r in second["runs"]), second


async def test_schedule_add_list_pause_trigger_delete(keel, tmp_path):
    name = f"ops-nightly-{uuid.uuid4().hex[:8]}"
    tenant = f"ops-sched-{uuid.uuid4().hex[:8]}"
    (tmp_path / "docs").mkdir()
    # A document the scheduled run reads but refuses at once (indexing real text would add the
    # worker's ~40 s model warm-up to this file; tests/test_pipeline.py covers indexing).
    (tmp_path / "docs" / "hours.xyz").write_text("The museum opens at nine and closes at five.")
    code, _ = await keel_json(
        keel.settings, "schedule", "add", name, "--cron", "0 2 * * *", "reindex", str(tmp_path / "docs"), "--tenant", tenant
    )
    assert code == 0

    async def listed(paused: bool | None = None):
        _, out = await keel_json(keel.settings, "schedule", "list")
        row = next((s for s in out["schedules"] if s["name"] == name), None)
        return row if row and (paused is None or row["paused"] == paused) else None

    row = await eventually(listed, "the schedule in the list")
    assert row["workflow_type"] == "IngestCorpus" and row["task_queue"] == keel.settings.task_queue
    assert row["cron"] == "0 2 * * *" and row["paused"] is False and row["next_runs"]
    assert row["command"].startswith("reindex ") and f"--tenant {tenant}" in row["command"]

    assert (await keel_json(keel.settings, "schedule", "pause", name))[0] == 0
    await eventually(lambda: listed(paused=True), "the schedule paused")

    code, out = await keel_json(keel.settings, "schedule", "trigger", name)  # runs now, paused or not
    assert code == 0 and out["workflow_id"].startswith(f"{name}-run"), out
    summary = await keel.client.get_workflow_handle(out["workflow_id"], result_type=IngestSummary).result()
    assert (summary.total, summary.failed) == (1, 1), summary  # the scheduled input (path, tenant) arrived
    assert summary.failures[0].path.endswith("hours.xyz"), summary

    assert (await keel_json(keel.settings, "schedule", "delete", name))[0] == 0

    async def gone():
        return await listed() is None

    await eventually(gone, "the schedule deleted")
    code, _ = await keel_json(keel.settings, "schedule", "trigger", name)
    assert code == 1  # no such schedule


async def test_redrive_reset_reruns_the_failed_step_in_place_once(keel, tmp_path):
    tenant = f"ops-reset-{uuid.uuid4().hex[:8]}"
    late = tmp_path / "late"
    handle = await keel.start_ingest([late], tenant)
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    async def failed_run():
        _, out = await keel_json(keel.settings, "runs", "--failed", "--tenant", tenant, "--type", "IngestCorpus")
        return out["runs"]

    [failed] = await eventually(failed_run, "the failed run in visibility")
    late.mkdir()
    code, out = await keel_json(keel.settings, "redrive", "--reset", "--type", "IngestCorpus", "--tenant", tenant)
    assert code == 0 and out["reset"] == 1, out
    [row] = out["runs"]
    assert row["redrive_id"] == handle.id and row["new_run_id"] != failed["run_id"]
    # Same workflow id, a new run: the failed step (list_documents) ran again and passed.
    summary = await keel.client.get_workflow_handle(handle.id, run_id=row["new_run_id"], result_type=IngestSummary).result()
    assert (summary.total, summary.failed) == (0, 0)
    events = [e async for e in keel.client.get_workflow_handle(handle.id, run_id=row["new_run_id"]).fetch_history_events()]
    assert any(e.HasField("workflow_task_failed_event_attributes") and "reset" in str(e).lower() for e in events)

    code, again = await keel_json(keel.settings, "redrive", "--reset", "--type", "IngestCorpus", "--tenant", tenant)
    assert code == 0 and again["reset"] == 0 and "superseded" in again["runs"][0]["reason"], again


async def test_schedule_add_eval_takes_keel_eval_arguments(keel, tmp_path):
    evaluation = pytest.importorskip("keel.evaluation")
    if not hasattr(evaluation, "schedule_action_args"):
        pytest.skip("keel.evaluation.schedule_action_args is not there yet")
    (tmp_path / "questions.jsonl").write_text('{"question": "When does the museum open?"}\n')
    (tmp_path / "A.toml").write_text("top_k = 2\n")
    (tmp_path / "B.toml").write_text("top_k = 6\n")
    name = f"ops-nightly-eval-{uuid.uuid4().hex[:8]}"
    code, added = await keel_json(
        keel.settings, "schedule", "add", name, "--cron", "0 3 * * *", "eval", "--data", str(tmp_path / "questions.jsonl"),
        "--config", str(tmp_path / "A.toml"), "--config", str(tmp_path / "B.toml"),
    )
    assert code == 0 and added["command"].startswith("eval --data "), added
    try:
        async def listed():
            _, out = await keel_json(keel.settings, "schedule", "list")
            return next((s for s in out["schedules"] if s["name"] == name), None)

        row = await eventually(listed, "the eval schedule in the list")
        assert row["workflow_type"] == "EvaluateRun" and row["cron"] == "0 3 * * *" and not row["paused"], row
    finally:
        assert (await keel_json(keel.settings, "schedule", "delete", name))[0] == 0
