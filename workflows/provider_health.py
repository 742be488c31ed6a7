"""A provider's circuit breaker, shared by every worker.

One long-running workflow per provider (id ``<task queue>-provider-<name>``), started by the
first failure any worker reports (signal-with-start). Attempts report to it; runs read it
before choosing their chain, so once it opens, no worker waits on that provider until the
cooldown ends: 20 workers do not each rediscover the outage.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.llm.types import HealthReport, ProviderHealthInput, ProviderHealthState
    from keel.llm.policy import record_health
    from keel import telemetry

# Continue as new after this many reports, so the history stays small.
REPORTS_PER_RUN = 500


@workflow.defn(sandboxed=False)
class ProviderHealth:
    @workflow.init
    def __init__(self, inp: ProviderHealthInput) -> None:
        # Set here, not in run(): with signal-with-start the signal can be handled first.
        self._state = inp.state
        self._reports = 0

    @workflow.run
    async def run(self, inp: ProviderHealthInput) -> None:
        await workflow.wait_condition(
            lambda: self._reports >= REPORTS_PER_RUN or workflow.info().is_continue_as_new_suggested()
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(ProviderHealthInput(state=self._state))

    @workflow.signal
    def report(self, report: HealthReport) -> None:
        before = self._state.times_opened
        now = workflow.now()
        self._state = record_health(self._state, report, now)
        self._reports += 1
        # Metrics from workflow code go through workflow.metric_meter(): not recorded on replay.
        if self._state.times_opened > before:
            telemetry.breaker_opened(self._state.provider)
        telemetry.breaker_state(self._state.provider, self._state.open_until is not None and self._state.open_until > now)

    @workflow.signal
    def reset(self) -> None:
        """Close the circuit now (an operator who fixed the provider)."""
        self._state = ProviderHealthState(provider=self._state.provider)
        self._reports += 1
        telemetry.breaker_state(self._state.provider, False)

    @workflow.query
    def state(self) -> ProviderHealthState:
        return self._state
