"""Index statistics, read through the process that owns the index."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.index import index_stats
    from keel.contracts import IndexStatsInput, IndexStatsOutput


@workflow.defn
class IndexStats:
    @workflow.run
    async def run(self, inp: IndexStatsInput) -> IndexStatsOutput:
        return await workflow.execute_activity(
            index_stats, inp, task_queue=inp.index_task_queue, start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=30),
        )
