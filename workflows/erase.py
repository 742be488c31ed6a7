"""Erase a tenant's data: index points, blobs, answer-cache entries (``keel tenant forget``).

Runs on the index owner's queue, because with the embedded index only that process may write
it. The caller then destroys the tenant's key (``keel.tenants.forget``), which makes what
cannot be deleted here, the tenant's Temporal histories, unreadable.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from keel.activities.index import EraseTenantInput, ErasedData, erase_tenant_data


@workflow.defn(sandboxed=False)
class EraseTenant:
    @workflow.run
    async def run(self, inp: EraseTenantInput) -> ErasedData:
        # Idempotent: a retry deletes what is left and reports it.
        return await workflow.execute_activity(
            erase_tenant_data, inp, start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
