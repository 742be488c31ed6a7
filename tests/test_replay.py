"""Replay recorded histories of every workflow type against the current workflow code.

A change that makes a workflow non-deterministic (reordered activities, a new timer, a
different child) fails here, in CI, instead of in production on running workflows.
Re-record with ``python -m tests.record_histories`` when a change is intentionally
incompatible (and version the workflow with ``workflow.patched``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows import ALL_WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_every_workflow_type_has_a_recorded_history():
    recorded = {p.name.split(".")[0] for p in HISTORIES}
    assert recorded >= {wf.__name__ for wf in ALL_WORKFLOWS}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.name)
async def test_recorded_history_replays_deterministically(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=ALL_WORKFLOWS).replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
