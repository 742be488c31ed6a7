"""The research-agent worker: ``python worker.py`` (from this folder).

It runs this project's workflows and the agent's ``search_notes`` tool on the ``research`` task
queue, and with ``KeelPlugin`` Keel's steps, the agent loop (``KeelAgent``), one queue per LLM
provider and the index. It owns the embedded index (``search_notes`` searches it in-process):
run no other Keel worker with the index next to it, e.g. start the stack with ``keel up
--workers 0``. Settings come from ``KEEL_*`` variables or ``keel.toml`` (``KeelSettings``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin, KeelSettings
from workflows import ACTIVITIES, WORKFLOWS

TASK_QUEUE = "research"


async def main() -> None:
    settings = KeelSettings()
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Leaving the block stops polling and shuts the worker down; an agent it leaves mid-way is
    # resumed (turn by turn, tool call by tool call) when a worker polls again.
    async with worker:
        logging.info("polling %r at %s", TASK_QUEUE, settings.temporal_address)
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
