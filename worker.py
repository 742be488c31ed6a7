"""Keel worker process.

    python -m worker                 # general queue: workflows, partition, PII, chunk, embed,
                                     # and one queue per LLM provider (<queue>-llm-<name>)
    python -m worker --index         # also the index queue (the owner of an embedded store)
    python -m worker --index-only    # only the index queue

With an embedded Qdrant store exactly one process may run with ``--index``; with a Qdrant
server (``KEEL_QDRANT_URL``) every worker can.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from keel.offline import configure_offline

configure_offline()

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities._runtime import runtime  # noqa: E402
from activities.answer import ANSWER_ACTIVITIES  # noqa: E402
from activities.cache import CACHE_ACTIVITIES  # noqa: E402
from activities.index import INDEX_ACTIVITIES  # noqa: E402
from activities.ingest import INGEST_ACTIVITIES  # noqa: E402
from activities.llm import LLM_ACTIVITIES, PLAN_ACTIVITIES  # noqa: E402
from keel.config import KeelSettings  # noqa: E402
from keel.providers import provider_task_queue  # noqa: E402
from workflows import ALL_WORKFLOWS  # noqa: E402

log = logging.getLogger("keel.worker")


async def run_worker(settings: KeelSettings, *, general: bool, index: bool) -> None:
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    # CPU-bound activities on a 2-core box: a few threads, not dozens.
    executor = ThreadPoolExecutor(max_workers=4)
    workers = []
    if general:
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=ALL_WORKFLOWS,
                activities=INGEST_ACTIVITIES + ANSWER_ACTIVITIES + PLAN_ACTIVITIES + CACHE_ACTIVITIES,
                activity_executor=executor,
                max_concurrent_activities=4,
            )
        )
        # One queue per provider: its slots bound concurrent requests per worker, and an
        # optional task-queue rate limit (enforced by the server) bounds the whole fleet.
        for provider in settings.provider_chain:
            workers.append(
                Worker(
                    client,
                    task_queue=provider_task_queue(settings.task_queue, provider.name),
                    activities=LLM_ACTIVITIES,
                    max_concurrent_activities=provider.max_concurrency,
                    max_task_queue_activities_per_second=provider.requests_per_second,
                )
            )
    if index:
        workers.append(
            Worker(
                client,
                task_queue=settings.index_task_queue,
                activities=INDEX_ACTIVITIES,
                activity_executor=executor,
                max_concurrent_activities=2,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queues = [w.task_queue for w in workers]
    log.info("worker polling %s at %s", ", ".join(queues), settings.temporal_address)
    async with _all(workers):
        await stop.wait()
    runtime().close()
    log.info("worker stopped")


class _all:
    """Run several temporalio Workers and shut them all down gracefully together."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    async def __aenter__(self):
        for w in self.workers:
            await w.__aenter__()

    async def __aexit__(self, *exc):
        await asyncio.gather(*(w.__aexit__(*exc) for w in self.workers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", action="store_true", help="also serve the index task queue")
    parser.add_argument("--index-only", action="store_true", help="serve only the index task queue")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    settings = KeelSettings()
    asyncio.run(run_worker(settings, general=not args.index_only, index=args.index or args.index_only))


if __name__ == "__main__":
    main()
