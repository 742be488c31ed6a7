"""The follow-up worker: ``python worker.py`` (from this folder).

It runs this project's workflow and its ``send_follow_up`` activity on the ``followup`` task
queue, and with ``KeelPlugin`` Keel's steps and one queue per LLM provider. Follow-ups never
search the index, so this worker leaves it to its owner (``index=False``) and can run next to
``keel up``'s workers. Settings come from ``KEEL_*`` variables or ``keel.toml``
(``KeelSettings``); emails go to the folder ``$FOLLOWUP_OUTBOX`` (default ``outbox/``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin, KeelSettings
from workflows import ACTIVITIES, WORKFLOWS

TASK_QUEUE = "followup"


async def main() -> None:
    settings = KeelSettings()
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings, index=False)]
    )
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Leaving the block stops polling and shuts the worker down; a waiting follow-up is not
    # affected: its timer lives in Temporal and any worker picks the run up again.
    async with worker:
        logging.info("polling %r at %s", TASK_QUEUE, settings.temporal_address)
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(main())
