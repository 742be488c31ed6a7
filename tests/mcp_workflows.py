"""A tiny workflow that does what the agent loop does with MCP tools: list them, then call some."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow

from keel.agents.mcp import MCPServer, mcp_tools
from keel.agents.tools import ToolCall, ToolResult


@dataclass
class CallMCPToolsInput:
    server: MCPServer
    calls: list[tuple[str, str]] = field(default_factory=list)  # (tool name, arguments JSON)


@dataclass
class CallMCPToolsOutput:
    tool_names: list[str]
    results: list[ToolResult]


@workflow.defn
class CallMCPTools:
    @workflow.run
    async def run(self, inp: CallMCPToolsInput) -> CallMCPToolsOutput:
        tools = {t.name: t for t in await mcp_tools(inp.server)}
        results = []
        for i, (name, arguments) in enumerate(inp.calls):
            spec = tools[name]
            call = ToolCall(
                id=f"call-{i}",
                name=spec.name,
                arguments=arguments,
                target=spec.target,
                idempotency_key=f"{workflow.info().run_id}:call-{i}",
            )
            results.append(
                await workflow.execute_activity(
                    spec.activity,
                    call,
                    result_type=ToolResult,
                    task_queue=spec.task_queue or workflow.info().task_queue,
                    start_to_close_timeout=spec.start_to_close,
                    retry_policy=spec.retry_policy(),
                )
            )
        return CallMCPToolsOutput(tool_names=sorted(tools), results=results)
