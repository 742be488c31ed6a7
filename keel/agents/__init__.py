"""Durable agents: a model with tools, in a loop, until a validated answer or a limit.

:func:`run_agent` in any workflow (or outside one, in-process); :func:`tool` makes a plain
function a tool (an activity you register on your worker); :mod:`keel.agents.mcp` brings the
tools of an MCP server.
"""

from keel.agents._loop import run_agent
from keel.agents.mcp import MCPServer, mcp_tools
from keel.agents.tools import ToolCall, ToolResult, ToolSpec, tool
from keel.agents.types import AgentLimits, AgentResult, AgentStop, ToolCallRecord

__all__ = [
    "AgentLimits", "AgentResult", "AgentStop", "MCPServer", "ToolCall", "ToolCallRecord", "ToolResult", "ToolSpec",
    "mcp_tools", "run_agent", "tool",
]
