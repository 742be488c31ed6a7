"""Replay recorded histories of every workflow type against the current workflow code.

Histories are kept per released version and never overwritten: ``tests/histories/*.json`` are
release 0.1.0's, ``tests/histories/<version>/*.json`` later releases'. Every history of the
current release must replay; a change that makes a workflow non-deterministic (reordered
activities, a new timer, a different child) fails here, in CI, instead of in production on
running workflows. 0.2.0 rebuilt the pipelines on the public API and is not replay-compatible
with 0.1.0 runs of the pipelines (README "Upgrading from 0.1"): which 0.1.0 histories still
replay is pinned below, so a break that is not stated fails too. 0.3.0 (asks on the index
owner's queue search as a local activity; agents) replays 0.2.0's histories unchanged, 0.4.0,
0.5.0 (answer checks behind ``workflow.patched``) and 0.6.0 (passage ranking behind
``workflow.patched``) every earlier one since 0.2.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from keel import KeelPlugin, KeelSettings
from keel.workflows import ALL_WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"
CURRENT = "0.6.0"
CURRENT_HISTORIES = sorted((HISTORIES / CURRENT).glob("*.json"))
COMPATIBLE_HISTORIES = [h for v in ("0.2.0", "0.3.0", "0.4.0", "0.5.0") for h in sorted((HISTORIES / v).glob("*.json"))] + CURRENT_HISTORIES
RELEASE_0_1 = sorted(HISTORIES.glob("*.json"))
# 0.1.0 histories of the entity workflows, whose code did not change, still replay; the
# pipelines' do not (stated in the README).
STILL_COMPATIBLE_0_1 = {"ProviderHealth", "TenantBudget"}


def replayer() -> Replayer:
    # Exactly what a worker with the plugin runs: workflows, data converter, sandbox settings,
    # and the deployment's queues the histories were recorded in (tests/record_histories.py):
    # a run on the index owner's queue searches locally, so replay must know that queue.
    # Histories are recorded in clear (tests/record_histories.py): the codec is not replayed.
    settings = KeelSettings(task_queue="histories", index_task_queue="histories-index", encryption=False)
    return Replayer(workflows=[], plugins=[KeelPlugin(settings)])


def test_every_workflow_type_has_a_recorded_history():
    recorded = {p.name.split(".")[0] for p in CURRENT_HISTORIES}
    assert recorded >= {wf.__name__ for wf in ALL_WORKFLOWS}


@pytest.mark.parametrize("path", COMPATIBLE_HISTORIES, ids=lambda p: f"{p.parent.name}/{p.name}")
async def test_recorded_history_replays_deterministically(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@pytest.mark.parametrize("path", RELEASE_0_1, ids=lambda p: p.name)
async def test_release_0_1_histories_replay_exactly_where_stated(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    if path.name.split(".")[0] in STILL_COMPATIBLE_0_1:
        assert result.replay_failure is None, result.replay_failure
    else:
        assert result.replay_failure is not None, f"{path.name} replays: update STILL_COMPATIBLE_0_1 and the README"
