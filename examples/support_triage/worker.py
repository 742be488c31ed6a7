"""The support-triage worker: ``python worker.py`` (from this folder).

It runs this project's workflows on the ``support`` task queue, and with ``KeelPlugin`` Keel's
steps, one queue per LLM provider and the index (it owns the embedded index: run no other Keel
worker with the index next to it, e.g. start the stack with ``keel up --workers 0``).
Settings come from ``KEEL_*`` variables or ``keel.toml`` (``KeelSettings``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin, KeelSettings
from workflows import WORKFLOWS

TASK_QUEUE = "support"


async def main() -> None:
    settings = KeelSettings()
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=WORKFLOWS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Leaving the block stops polling and shuts the worker down; work it leaves unfinished is
    # retried by Temporal when a worker polls again.
    async with worker:
        logging.info("polling %r at %s", TASK_QUEUE, settings.temporal_address)
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
