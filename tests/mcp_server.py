"""A small real MCP server for Keel's MCP tests (the official SDK's ``MCPServer``, FastMCP in mcp 1.x).

    python tests/mcp_server.py stdio            # over stdin/stdout
    python tests/mcp_server.py http PORT        # streamable HTTP on 127.0.0.1:PORT/mcp
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("keel-test-tools", log_level="WARNING")

REPORT_LINE = "line {i:04d}: the quick brown fox jumps over the lazy dog\n"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def report(lines: int = 170) -> str:
    """A long report (about 10 KB with the default number of lines)."""
    return "".join(REPORT_LINE.format(i=i) for i in range(lines))


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with ``reason``."""
    raise ToolError(f"tool failed on purpose: {reason}")


@server.tool()
def env_var(name: str) -> str:
    """The server's environment variable ``name`` ("" when unset)."""
    return os.environ.get(name, "")


@server.tool()
def sleep(seconds: float) -> str:
    """Answer after ``seconds``."""
    time.sleep(seconds)
    return "awake"


@server.tool(name="lookup.v2")
def lookup(key: str) -> str:
    """A tool whose name needs sanitising (it has a dot)."""
    return f"value of {key}"


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
