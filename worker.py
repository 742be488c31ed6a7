"""Keel's stock worker process (``python -m keel.worker``): a Temporal worker with ``KeelPlugin``.

    python -m keel.worker                      # Keel's queue: workflows, steps, one queue per LLM provider
    python -m keel.worker --index              # also the index queue (the owner of an embedded store)
    python -m keel.worker --app mypkg.workflows   # also your workflows and activities (repeatable)

With an embedded index exactly one process may run with ``--index``; with a Qdrant server
(``KEEL_QDRANT_URL``) every worker can. Your own worker is the same few lines: a client with
``KeelPlugin`` and a ``Worker`` with your workflows (README "Build your own pipeline").
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import signal

from keel.offline import configure_offline

configure_offline()

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from keel.config import KeelSettings  # noqa: E402
from keel.plugin import KeelPlugin  # noqa: E402

log = logging.getLogger("keel.worker")


def load_app(module_name: str) -> tuple[list[type], list]:
    """The ``@workflow.defn`` classes and ``@activity.defn`` functions of a module (of a
    package: what its ``__init__`` imports)."""
    module = importlib.import_module(module_name)
    workflows, activities = [], []
    for _, value in inspect.getmembers(module):
        if inspect.isclass(value) and hasattr(value, "__temporal_workflow_definition"):
            workflows.append(value)
        elif callable(value) and hasattr(value, "__temporal_activity_definition"):
            activities.append(value)
    if not workflows and not activities:
        raise SystemExit(f"--app {module_name}: no @workflow.defn class or @activity.defn function found in it")
    return workflows, activities


def metrics_runtime(settings: KeelSettings, port: int | None = None):
    """The Temporal runtime serving this process's Prometheus metrics (None: no endpoint).
    A port already taken is logged, not fatal: the worker runs without its endpoint."""
    from keel.telemetry import prometheus_runtime

    port = settings.metrics_port if port is None else port
    if not port:
        return None
    address = f"{settings.metrics_host}:{port}"
    try:
        runtime = prometheus_runtime(address)
    except ValueError as e:
        log.warning("no metrics endpoint on %s: %s", address, e)
        return None
    log.info("metrics on http://%s/metrics", address)
    return runtime


async def run_worker(settings: KeelSettings, *, index: bool, apps: list[str] = (), metrics_port: int | None = None) -> None:
    workflows, activities = [], []
    for app in apps:
        w, a = load_app(app)
        workflows += w
        activities += a
    plugin = KeelPlugin(settings, index=index)
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[plugin],
        runtime=metrics_runtime(settings, metrics_port),
    )
    worker = Worker(client, task_queue=settings.task_queue, workflows=workflows, activities=activities, max_concurrent_activities=4)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling %s (and Keel's queues) at %s", worker.task_queue, settings.temporal_address)
    async with worker:  # KeelPlugin closes Keel's runtime (the embedded index) when it stops
        await stop.wait()
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", action="store_true", help="also serve the index task queue")
    parser.add_argument("--app", action="append", default=[], metavar="MODULE", help="also run this module's workflows and activities")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (default KEEL_METRICS_PORT; 0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    settings = KeelSettings()
    asyncio.run(run_worker(settings, index=args.index, apps=args.app, metrics_port=args.metrics_port))


if __name__ == "__main__":
    main()
