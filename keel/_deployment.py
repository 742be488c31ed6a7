"""The task queues of a Keel deployment, as workflow code needs them.

``KeelPlugin`` registers them for every worker it configures, keyed by the worker's task queue;
steps read them to route activities (the index owner's queue, each provider's queue), so a
user's workflow never spells a queue name. Fixed for the life of a worker, so reading them in
workflow code is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow


@dataclass(frozen=True)
class Deployment:
    task_queue: str = "keel"  # Keel's workflows and entity workflows; provider queues derive from it
    index_task_queue: str = "keel-index"


_default = Deployment()
_by_queue: dict[str, Deployment] = {}


def current() -> Deployment:
    """The deployment of the worker running the current workflow (outside one: the last registered)."""
    if workflow.in_workflow():
        return _by_queue.get(workflow.info().task_queue, _default)
    return _default


def register(task_queue: str, deployment: Deployment) -> None:
    global _default
    _by_queue[task_queue] = deployment
    _default = deployment
