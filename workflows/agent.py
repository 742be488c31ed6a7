"""``KeelAgent``: the durable agent loop, one child workflow per agent of a run.

Each model turn is one ``keel.llm_request`` (the provider chain: fall-over to the next provider
when one fails for good, every attempt accounted), each tool call its own activity with the
tool's retry policy. The conversation lives in the blob store as a chain of content-addressed
segments: a turn's input is the previous head plus the new tool results (by key), so history
grows by a few hundred bytes per turn whatever the tools return. After
``limits.turns_per_run`` turns (or when Temporal suggests it) the agent continues as new,
carrying only its state. The final answer is validated by the caller (``run_agent``), which
runs this workflow again with the validation errors to repair it.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.activities.llm import Prepared, PrepareInput, RequestInput, RequestOutput, prepare_llm_call
    from keel.agents.tools import ToolCall, ToolResult, ToolSpec
    from keel.agents.types import AgentInput, AgentOutput, AgentStop, ToolCallRecord
    from keel.errors import BudgetExceeded, failure_reason
    from keel.llm._complete import request, run_ledger, total_cost
    from keel.llm.policy import choose_chain
    from keel.options import STEP_DEFAULTS


@workflow.defn(name="KeelAgent", sandboxed=False)
class KeelAgent:
    """A model with tools, turn after turn, until it answers or a limit stops it."""

    @workflow.run
    async def run(self, inp: AgentInput) -> AgentOutput:
        st, limits = inp.state, inp.limits
        ledger = run_ledger()
        ledger.requests = st.requests  # attempts keep their numbers across continue-as-new
        earlier = list(st.attempts)
        if not st.started_at:
            st.started_at = workflow.now().timestamp()
        prepare = STEP_DEFAULTS["llm_prepare"]
        prepared: Prepared = await workflow.execute_local_activity(
            prepare_llm_call,
            PrepareInput(tenant=inp.tenant, messages=inp.messages, schema=inp.schema, tools=[t.for_model() for t in inp.tools]),
            start_to_close_timeout=prepare.start_to_close_timeout,
            retry_policy=prepare.retry_policy,
        )
        if not st.head:
            st.head = prepared.prompt_key
        choice = choose_chain(prepared.plan, workflow.now())
        st.decisions.extend(choice.decisions)
        if choice.refused:
            raise ApplicationError(choice.refused, type=BudgetExceeded.__name__, non_retryable=True)
        tools = {t.name: t for t in inp.tools}
        append = list(inp.append)
        turns_here = 0

        def out(**kw) -> AgentOutput:
            st.attempts = earlier + choice.skipped + ledger.attempts
            st.requests = ledger.requests
            return AgentOutput(state=st, **kw)

        while True:
            stop = self._limit(inp, total_cost(earlier) + ledger.cost_usd)
            if stop is not None:
                return out(stop=stop[0], reason=stop[1])
            if turns_here >= limits.turns_per_run or workflow.info().is_continue_as_new_suggested():
                carried = out().state
                workflow.continue_as_new(
                    AgentInput(inp.tenant, inp.schema, inp.tools, limits, inp.tool_queue, append=append, state=carried)
                )
            reply, why = await self._turn(inp, ledger, choice.providers, append)
            if reply is None:
                return out(stop=AgentStop.LLM_FAILED, reason=why)
            st.turns += 1
            turns_here += 1
            st.head, st.model, st.provider = reply.head, reply.model, reply.provider
            if not reply.tool_calls:
                return out(final=reply.content)
            results = await asyncio.gather(*(self._tool(inp, tools, c) for c in reply.tool_calls))
            for call, r in zip(reply.tool_calls, results):
                st.tool_calls.append(ToolCallRecord(st.turns, r.id, r.name, call["arguments"], r.preview, r.size, r.error))
            append = [r.message() for r in results]

    def _limit(self, inp: AgentInput, spent: float) -> tuple[AgentStop, str] | None:
        st, limits = inp.state, inp.limits
        if st.turns >= limits.max_turns:
            return AgentStop.MAX_TURNS, f"{st.turns} turns without a final answer (max_turns={limits.max_turns})"
        if limits.budget_usd is not None and spent >= limits.budget_usd:
            return AgentStop.BUDGET, f"spent ${spent:.6f} of the agent's ${limits.budget_usd:.6f} budget"
        if limits.max_seconds is not None and workflow.now().timestamp() - st.started_at > limits.max_seconds:
            return AgentStop.TIMEOUT, f"ran longer than {limits.max_seconds:g} s"
        return None

    async def _turn(self, inp: AgentInput, ledger, providers, append) -> tuple[RequestOutput | None, str]:
        """One model turn, falling over to the next provider when one fails for good."""
        reasons = []
        for provider in providers:
            ledger.requests += 1
            req = RequestInput(
                provider=provider.name, prompt_key=inp.state.head, tenant=inp.tenant, call=ledger.requests,
                max_tokens=inp.limits.max_tokens, append=append, conversation=True,
            )
            try:
                return await request(ledger, provider, req, None), ""
            except ActivityError as e:
                reasons.append("{}: {}: {}".format(provider.name, *failure_reason(e)))
        return None, "; ".join(reasons) or "no LLM provider available: every circuit is open"

    async def _tool(self, inp: AgentInput, tools: dict[str, ToolSpec], call: dict[str, str]) -> ToolResult:
        spec = tools.get(call["name"])
        if spec is None:
            return ToolResult(call["id"], call["name"], error=f"no tool named {call['name']!r}; the tools are: {', '.join(tools)}")
        key = f"{workflow.info().workflow_id}/{inp.state.turns}/{call['id']}"
        try:
            return await workflow.execute_activity(
                spec.activity,
                ToolCall(call["id"], call["name"], call["arguments"], spec.target, inp.tenant, key),
                result_type=ToolResult,
                task_queue=spec.task_queue or inp.tool_queue,
                start_to_close_timeout=spec.start_to_close,
                retry_policy=spec.retry_policy(),
            )
        except ActivityError as e:
            return ToolResult(call["id"], call["name"], error="{}: {}".format(*failure_reason(e)))
