"""Document permissions end to end: readers from the ingest input and from sidecars, asks as a
user with groups, through the real Temporal server and workers (the LLM is the fake)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keel.workflows.answer import AnswerQuestion
from keel.workflows.ingest import IngestCorpus
from tests.conftest import KeelEnv

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXT = "Lighthouse log\n\nThe {} keeper trimmed the lamp wick and logged the fog signal tests at dawn."


async def test_asks_see_only_documents_their_asker_may_read(keel: KeelEnv, tmp_path, capsys):
    for name in ("open", "alice", "hr"):
        (tmp_path / f"{name}.txt").write_text(TEXT.format(name))
    (tmp_path / "open.txt.meta.json").write_text(json.dumps({"readers": []}))  # public, whatever the run says
    (tmp_path / "hr.txt.meta.json").write_text(json.dumps({"readers": ["group:hr"]}))
    inp = keel.settings.ingest_input("acl", [str(tmp_path)])
    inp.readers = ["user:alice"]  # `keel ingest --allow user:alice`: every file without its own readers
    summary = await keel.client.execute_workflow(
        IngestCorpus.run, inp, id=keel.workflow_id("ingest"), task_queue=keel.settings.task_queue
    )
    assert (summary.indexed, summary.failed) == (3, 0), summary.failures
    chunks_before = (await keel.stats("acl")).chunks

    async def ask(principal, groups=()):
        ask_input = keel.settings.ask_input("acl", "What did the keeper log about the fog signal tests?")
        ask_input.principal, ask_input.groups, ask_input.use_cache = principal, list(groups), False
        result = await keel.client.execute_workflow(
            AnswerQuestion.run, ask_input, id=keel.workflow_id("ask"), task_queue=keel.settings.index_task_queue
        )
        assert result.answerable
        return {Path(c.document).name for c in result.citations}

    for principal, groups, allowed in [
        (None, [], {"open.txt"}),
        ("alice", [], {"open.txt", "alice.txt"}),
        ("bob", ["hr"], {"open.txt", "hr.txt"}),
        ("user:carol", ["finance"], {"open.txt"}),
    ]:
        cited = await ask(principal, groups)
        assert cited and cited <= allowed, (principal, groups, cited)

    # `keel permissions`: alice's file now belongs to group hr, in place (nothing re-embedded).
    from keel.cli import build_parser, cmd_permissions

    args = build_parser().parse_args(
        ["permissions", str(tmp_path / "alice.txt"), str(tmp_path / "missing.txt"), "--tenant", "acl", "--allow", "group:hr", "--json"]
    )
    assert await cmd_permissions(args, keel.settings) == 1  # one of the files is not indexed
    rows = json.loads(capsys.readouterr().out)
    assert [r["chunks"] > 0 for r in rows] == [True, False] and rows[0]["readers"] == ["group:hr"]
    assert (await keel.stats("acl")).chunks == chunks_before
    assert "alice.txt" not in await ask("alice")
    cited = await ask("bob", ["hr"])
    assert cited <= {"open.txt", "hr.txt", "alice.txt"}
