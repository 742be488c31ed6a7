"""A tenant's LLM spend per budget period, shared by every worker.

One long-running workflow per tenant (id ``<task queue>-budget-<tenant>``). Every LLM attempt
charges it what it cost (signal-with-start, from the attempt itself, so retries and failed
attempts are charged too); runs read it before choosing their chain.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.llm.types import Charge, PeriodSpend, TenantBudgetInput
    from keel import telemetry

CHARGES_PER_RUN = 1000  # continue as new after this many charges
KEEP_PERIODS = 3  # the current period and two before it


@workflow.defn(sandboxed=False)
class TenantBudget:
    @workflow.init
    def __init__(self, inp: TenantBudgetInput) -> None:
        self._tenant = inp.tenant
        self._periods = dict(inp.periods)
        self._charges = 0

    @workflow.run
    async def run(self, inp: TenantBudgetInput) -> None:
        await workflow.wait_condition(
            lambda: self._charges >= CHARGES_PER_RUN or workflow.info().is_continue_as_new_suggested()
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(TenantBudgetInput(tenant=self._tenant, periods=self._periods))

    @workflow.signal
    def charge(self, charge: Charge) -> None:
        spend = self._periods.setdefault(charge.period, PeriodSpend())
        spend.cost_usd += charge.cost_usd
        spend.prompt_tokens += charge.prompt_tokens
        spend.completion_tokens += charge.completion_tokens
        spend.attempts += 1
        if charge.period == max(self._periods):  # the current period's spend (replay-safe metric)
            telemetry.budget(self._tenant, spend.cost_usd)
        for old in sorted(self._periods)[:-KEEP_PERIODS]:
            del self._periods[old]
        self._charges += 1

    @workflow.query
    def spend(self, period: str) -> PeriodSpend:
        return self._periods.get(period, PeriodSpend())

    @workflow.query
    def periods(self) -> dict[str, PeriodSpend]:
        return self._periods
