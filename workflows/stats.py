"""Index statistics, read through the process that owns the index."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel import steps
    from keel.activities.index import IndexStatsOutput


@dataclass
class IndexStatsInput:
    tenant: str


@workflow.defn(sandboxed=False)
class IndexStats:
    @workflow.run
    async def run(self, inp: IndexStatsInput) -> IndexStatsOutput:
        return await steps.index_stats(inp.tenant)
