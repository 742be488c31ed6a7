"""``keel.agents.run_agent``: a model with tools until a validated answer or a limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio import workflow

from keel.agents.tools import ToolCall, ToolResult, call_tool, spec_of
from keel.agents.types import AgentInput, AgentLimits, AgentOutput, AgentResult, AgentStop, ToolCallRecord
from keel.llm._complete import (
    _messages,
    output_schema,
    repair_messages,
    request_in_process,
    total_cost,
    total_usage,
    validate_reply,
)
from keel.llm.types import AttemptOutcome, Message, ProviderAttempt

T = TypeVar("T", bound=BaseModel)
_COUNTER = "_keel_agents_started"


async def run_agent(
    prompt: str | Sequence[Message | dict],
    output: type[T],
    *,
    tenant: str,
    tools: Sequence[Any] = (),
    system: str | None = None,
    limits: AgentLimits | None = None,
    validate: Callable[[T], list[str]] | None = None,
    agent_id: str | None = None,
) -> AgentResult[T]:
    """Run an agent: the provider chain with ``tools`` until its final answer validates against
    ``output`` (a pydantic model), or a limit stops it (``AgentResult.stop`` says which).

    In a workflow the agent is a child workflow, ``KeelAgent`` (id ``<run's id>-agent-<n>``, or
    ``agent_id``), on the caller's task queue: each model turn and each tool call is its own
    durable step, the conversation is kept by reference and the agent continues as new after
    ``limits.turns_per_run`` turns, so long sessions keep small histories. Tools run on your
    worker: register each one in ``activities=[...]``.

    :param tools: functions made tools with :func:`keel.agents.tool` (or :class:`ToolSpec` s,
        e.g. from :func:`keel.agents.mcp.mcp_tools`).
    :param validate: more checks on an answer that passed the schema (errors trigger a repair).

    Outside a workflow the same loop runs in-process (tools called directly):

    >>> import asyncio, json
    >>> from pydantic import BaseModel
    >>> from keel.agents import run_agent, tool
    >>> from keel.testing import FakeOpenAI, Step, in_process
    >>> @tool
    ... def stock(sku: str) -> int:
    ...     '''Units in stock of a product.'''
    ...     return {"A1": 4}.get(sku, 0)
    >>> class Reply(BaseModel):
    ...     units: int
    >>> with FakeOpenAI() as fake, in_process(fake):
    ...     fake.script(Step.tool_calls(("stock", {"sku": "A1"})), Step.ok('{"units": 4}'))
    ...     result = asyncio.run(run_agent("How many A1 are left?", Reply, tenant="shop", tools=[stock]))
    >>> result.ok, result.value, [c.name for c in result.tool_calls], result.turns
    (True, Reply(units=4), ['stock'], 2)
    """
    messages = _messages(prompt, system)
    specs = [spec_of(t) for t in tools]
    limits = limits or AgentLimits()
    inp = AgentInput(tenant, output_schema(output), specs, limits, tool_queue="", messages=messages)
    if not workflow.in_workflow():
        impls = {spec_of(t).name: getattr(t, "keel_tool_impl", None) for t in tools}
        return await _in_process(inp, output, validate, impls)
    info = workflow.info()
    instance = workflow.instance()
    n = getattr(instance, _COUNTER, 0) + 1
    setattr(instance, _COUNTER, n)
    wid = agent_id or f"{info.workflow_id}-agent-{n}"
    inp.tool_queue = info.task_queue
    result: AgentResult = AgentResult(ok=False, workflow_id=wid)
    for repair in range(limits.max_repairs + 1):
        out: AgentOutput = await workflow.execute_child_workflow(
            "KeelAgent", inp, id=wid if repair == 0 else f"{wid}-repair-{repair}", result_type=AgentOutput
        )
        if _settle(result, out, output, validate):
            return result
        # The invalid answer is in the conversation already: say what is wrong and go on.
        inp = AgentInput(
            tenant, inp.schema, specs, limits, inp.tool_queue, state=out.state,
            append=[{"role": "user", "content": repair_messages("", result.errors)[1].content}],
        )
    result.stop, result.reason = AgentStop.INVALID_OUTPUT, "invalid answer after repair: " + "; ".join(result.errors)
    return result


def _settle(result: AgentResult, out: AgentOutput, output: type, validate) -> bool:
    """Copy an agent run's outcome into ``result``; True when there is nothing more to do."""
    st = out.state
    result.turns, result.tool_calls, result.attempts, result.decisions = st.turns, st.tool_calls, st.attempts, st.decisions
    result.usage, result.cost_usd = total_usage(st.attempts), total_cost(st.attempts)
    result.model, result.provider, result.conversation = st.model, st.provider, st.head
    if out.final is None:
        result.stop, result.reason = out.stop or AgentStop.LLM_FAILED, out.reason
        return True
    value, errors = validate_reply(output, out.final, validate)
    result.errors = errors
    if errors:
        return False
    result.ok, result.value, result.stop, result.reason = True, value, AgentStop.ANSWERED, ""
    return True


# --- outside a workflow: the same loop, in-process -------------------------------------------


async def _in_process(inp: AgentInput, output: type, validate, impls: dict[str, Any]) -> AgentResult:
    from keel.activities._runtime import runtime

    settings = runtime().settings
    limits = inp.limits
    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in inp.messages]
    tools = [t.for_model() for t in inp.tools] or None
    result: AgentResult = AgentResult(ok=False)
    attempts: list[ProviderAttempt] = []
    repairs = 0
    loop = asyncio.get_running_loop()
    started = loop.time()

    def finish(stop: AgentStop, reason: str) -> AgentResult:
        result.stop, result.reason, result.attempts = stop, reason, attempts
        result.usage, result.cost_usd = total_usage(attempts), total_cost(attempts)
        return result

    while True:
        if result.turns >= limits.max_turns:
            return finish(AgentStop.MAX_TURNS, f"{result.turns} turns without a final answer (max_turns={limits.max_turns})")
        if limits.budget_usd is not None and total_cost(attempts) >= limits.budget_usd:
            return finish(AgentStop.BUDGET, f"spent ${total_cost(attempts):.6f} of the agent's ${limits.budget_usd:.6f} budget")
        if limits.max_seconds is not None and loop.time() - started > limits.max_seconds:
            return finish(AgentStop.TIMEOUT, f"ran longer than {limits.max_seconds:g} s")
        completion, reasons = None, []
        for provider in settings.provider_chain:
            call = len({a.call for a in attempts}) + 1
            completion, failure = await request_in_process(
                provider, messages, attempts, call=call, schema=inp.schema,
                max_tokens=limits.max_tokens or settings.llm_max_tokens, tools=tools,
            )
            if completion is not None:
                attempts[-1].outcome = AttemptOutcome.ANSWERED
                result.model, result.provider = completion.model, provider.name
                break
            reasons.append(f"{provider.name}: {type(failure).__name__}: {failure.message}")
        if completion is None:
            return finish(AgentStop.LLM_FAILED, "; ".join(reasons))
        result.turns += 1
        reply: dict[str, Any] = {"role": "assistant", "content": completion.content}
        if completion.tool_calls:
            reply["tool_calls"] = completion.tool_calls
        messages.append(reply)
        if not completion.tool_calls:
            value, errors = validate_reply(output, completion.content, validate)
            result.errors = errors
            if not errors:
                result.ok, result.value = True, value
                return finish(AgentStop.ANSWERED, "")
            if repairs >= limits.max_repairs:
                return finish(AgentStop.INVALID_OUTPUT, "invalid answer after repair: " + "; ".join(errors))
            repairs += 1
            messages.append({"role": "user", "content": repair_messages("", errors)[1].content})
            continue
        for c in completion.tool_calls:
            r = await _call_in_process(impls.get(c["name"]), inp, c, result.turns)
            result.tool_calls.append(ToolCallRecord(result.turns, c["id"], c["name"], c["arguments"], r.preview, r.size, r.error))
            text = f"error: {r.error}" if r.error is not None else runtime().blobs.get(r.content_key).decode()
            messages.append({"role": "tool", "tool_call_id": c["id"], "name": c["name"], "content": text})


async def _call_in_process(impl, inp: AgentInput, c: dict[str, str], turn: int) -> ToolResult:
    if impl is None:
        return ToolResult(c["id"], c["name"], error=f"no in-process tool named {c['name']!r}")
    call = ToolCall(c["id"], c["name"], c["arguments"], tenant=inp.tenant, idempotency_key=f"in-process-{uuid.uuid4().hex}/{turn}/{c['id']}")
    try:
        return await call_tool(impl, call)
    except Exception as e:  # noqa: BLE001 - the model is told, as in a workflow
        return ToolResult(c["id"], c["name"], error=f"{type(e).__name__}: {getattr(e, 'message', None) or e}")

