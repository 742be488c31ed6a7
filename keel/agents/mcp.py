"""MCP servers as agent tools: every tool of a Model Context Protocol server becomes a :class:`ToolSpec`.

Describe the server with :class:`MCPServer` (a stdio ``command`` or a streamable-HTTP ``url``),
get its tools with :func:`mcp_tools` and hand them to the agent loop like any other tools::

    server = MCPServer(name="files", command=["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"])
    tools = await mcp_tools(server)          # in a workflow: an activity, recorded in history
    answer = await run_agent(..., tools=tools)

Two activities do the work (register :data:`MCP_ACTIVITIES` on the worker that can reach the
server; ``MCPServer.task_queue`` routes to it):

* ``keel.mcp_list_tools`` (:class:`MCPServer` -> :class:`MCPToolList`): connect, list the tools,
  one :class:`ToolSpec` per tool, named ``<server name>_<tool name>`` (sanitised to
  ``^[a-zA-Z0-9_-]{1,64}$``), with ``activity="keel.mcp_call_tool"`` and the server's
  description (JSON) as ``target``;
* ``keel.mcp_call_tool`` (:class:`ToolCall` -> :class:`ToolResult`): connect again from
  ``call.target``, call the tool, store its content as text in the blob store
  (:func:`~keel.agents.tools.store_result`: only the key and a preview enter history).

Each activity opens its own connection (a stdio server is started per call), so nothing is
shared between calls or workers and a retry is just another call. A tool's own failure (the
server's ``isError`` result, arguments it rejects, an unknown tool) comes back as
``ToolResult.error`` for the model to read; a server that cannot be reached (or fails at the
protocol level) raises a retryable ``ApplicationError`` of type ``MCPServerUnavailable`` and
Temporal retries the activity. The call's idempotency key travels in the request's ``_meta``
as ``keel/idempotency_key``, so a server with side effects can do them once.

The server description is recorded in workflow history (it is the activities' input and the
tools' ``target``): keep secrets out of it. ``${NAME}`` in ``command``, ``env``, ``url`` and
``headers`` values is replaced on the worker with its environment variable ``NAME``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from keel.agents.tools import ToolCall, ToolResult, ToolSpec, store_result

LIST_TOOLS = "keel.mcp_list_tools"
CALL_TOOL = "keel.mcp_call_tool"
UNAVAILABLE = "MCPServerUnavailable"  # the ApplicationError type of a server that cannot be reached
BAD_TARGET = "InvalidMCPTarget"  # ToolCall.target is not a server description (non-retryable)
ERROR_CHARS = 2000  # a tool error enters history: at most this many characters of it
MAX_PAGES = 100  # of a tools/list walk
IDEMPOTENCY_META = "keel/idempotency_key"

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class MCPServer:
    """An MCP server: a command speaking MCP over stdio, or a streamable-HTTP endpoint.

    :param name: prefixes its tools' names (``<name>_<tool>``), so two servers' tools don't clash.
    :param command: stdio: the program and its arguments, started for each connection.
    :param env: stdio: extra environment variables (over the SDK's safe defaults: PATH, HOME…).
    :param cwd: stdio: the working directory.
    :param url: streamable HTTP: the endpoint, e.g. ``http://127.0.0.1:8000/mcp``.
    :param headers: streamable HTTP: extra request headers (e.g. ``{"Authorization": "Bearer ${TOKEN}"}``).
    :param include: only these tools (the server's names); empty: all of them.
    :param task_queue: the queue of workers that can reach the server and have
        :data:`MCP_ACTIVITIES` (None: the calling workflow's queue).
    :param timeout_seconds: the longest one connect-and-list may take.
    :param call_timeout_seconds: the longest one tool call may take (its ``ToolSpec.start_to_close_seconds``).
    :param max_attempts: Temporal attempts of one listing or call (0: unlimited).

    ``${NAME}`` in ``command``, ``env``, ``url`` and ``headers`` values is read from the worker's
    environment when connecting: the description itself is recorded in workflow history.

    >>> MCPServer(name="files", command=["mcp-server-files", "/srv/docs"]).transport
    'stdio'
    >>> MCPServer(name="search", url="http://127.0.0.1:8000/mcp").transport
    'http'
    """

    name: str
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    task_queue: str | None = None
    timeout_seconds: float = 60.0
    call_timeout_seconds: float = 300.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"MCPServer {self.name!r}: give exactly one of command (stdio) or url (streamable HTTP)")

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "stdio" if self.command else "http"

    def to_json(self) -> str:
        """This description as JSON text (what a tool's ``target`` carries)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MCPServer:
        """The server described by :meth:`to_json`'s text (other keys are ignored)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def tool_name(self, tool: str) -> str:
        """What the model calls this server's tool ``tool``.

        >>> MCPServer(name="docs", url="http://127.0.0.1:8000/mcp").tool_name("search.v2")
        'docs_search_v2'
        """
        return _UNSAFE.sub("_", f"{self.name}_{tool}" if self.name else tool)[:64] or "_"


@dataclass
class MCPToolList:
    """The output of ``keel.mcp_list_tools``: one :class:`ToolSpec` per tool of the server."""

    server: str  # the server's name
    tools: list[ToolSpec] = field(default_factory=list)


# --- connecting --------------------------------------------------------------------------------


def _expand(value: str) -> str:
    def var(m: re.Match[str]) -> str:
        if m[1] not in os.environ:
            raise ApplicationError(f"environment variable {m[1]} is not set on this worker", type=UNAVAILABLE)
        return os.environ[m[1]]

    return _ENV_REF.sub(var, value)


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _unavailable(server: MCPServer, e: BaseException, timeout: float) -> ApplicationError:
    if isinstance(e, ApplicationError):
        return e
    why = "; ".join(
        f"no answer within {timeout:g} s" if isinstance(x, TimeoutError) and not str(x) else f"{type(x).__name__}: {x}"
        for x in _leaves(e)
    )
    where = " ".join(server.command) if server.command else server.url
    return ApplicationError(f"MCP server {server.name!r} ({where}) unavailable: {why}", type=UNAVAILABLE)


async def _connect(stack: AsyncExitStack, server: MCPServer, read_timeout: float):
    """An entered ``mcp.Client`` for ``server`` (closed with ``stack``)."""
    from mcp import Client, StdioServerParameters

    if server.command:
        command = [_expand(c) for c in server.command]
        target: Any = StdioServerParameters(
            command=command[0],
            args=command[1:],
            env={k: _expand(v) for k, v in server.env.items()} or None,
            cwd=server.cwd,
        )
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers={k: _expand(v) for k, v in server.headers.items()},
                timeout=httpx2.Timeout(30.0, read=read_timeout),
            )
        )
        target = streamable_http_client(_expand(server.url), http_client=http)
    return await stack.enter_async_context(Client(target, read_timeout_seconds=read_timeout, cache=None))


# --- listing -----------------------------------------------------------------------------------


@activity.defn(name=LIST_TOOLS)
async def list_tools_activity(server: MCPServer) -> MCPToolList:
    """Connect to ``server`` and describe its tools (``keel.mcp_list_tools``).

    Each :class:`ToolSpec` runs as ``keel.mcp_call_tool`` on ``server.task_queue``, with
    ``target`` = the server's description plus the tool's own name (JSON text).
    """
    import anyio

    try:
        with anyio.fail_after(server.timeout_seconds):
            async with AsyncExitStack() as stack:
                client = await _connect(stack, server, server.timeout_seconds)
                tools, cursor = [], None
                for _ in range(MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
    except Exception as e:
        raise _unavailable(server, e, server.timeout_seconds) from None
    out = MCPToolList(server=server.name)
    taken: set[str] = set()
    for t in tools:
        if server.include and t.name not in server.include:
            continue
        name = server.tool_name(t.name)
        n = 2
        while name in taken:  # two names that sanitise alike
            suffix = f"_{n}"
            name, n = server.tool_name(t.name)[: 64 - len(suffix)] + suffix, n + 1
        taken.add(name)
        out.tools.append(
            ToolSpec(
                name=name,
                description=t.description or t.title or t.name,
                parameters=dict(t.input_schema or {"type": "object", "properties": {}}),
                activity=CALL_TOOL,
                task_queue=server.task_queue,
                target=json.dumps({**dataclasses.asdict(server), "tool": t.name}, sort_keys=True),
                start_to_close_seconds=server.call_timeout_seconds,
                max_attempts=server.max_attempts,
            )
        )
    return out


async def mcp_tools(server: MCPServer) -> list[ToolSpec]:
    """The tools of an MCP server, as :class:`ToolSpec` s for the agent loop.

    In a workflow this runs ``keel.mcp_list_tools`` as an activity (on ``server.task_queue``),
    so the list is recorded in history and a replay uses the recorded list; outside one it
    connects in-process.

    Outside a workflow (e.g. to see what the model will be offered)::

        server = MCPServer(name="demo", command=[sys.executable, "tests/mcp_server.py", "stdio"])
        [t.name for t in await mcp_tools(server)]
        # ['demo_add', 'demo_report', 'demo_fail', ..., 'demo_lookup_v2']

    In a workflow::

        tools = await mcp_tools(MCPServer(name="search", url="http://search:8000/mcp", task_queue="tools"))
    """
    if not workflow.in_workflow():
        return (await list_tools_activity(server)).tools
    out = await workflow.execute_activity(
        list_tools_activity,
        server,
        task_queue=server.task_queue,
        start_to_close_timeout=timedelta(seconds=server.timeout_seconds),
        retry_policy=RetryPolicy(maximum_attempts=server.max_attempts),
    )
    return out.tools


# --- calling -----------------------------------------------------------------------------------


def content_text(result: Any) -> str:
    """An MCP ``CallToolResult`` as the text the model reads: its text blocks, other blocks
    described briefly, the structured content when there are no blocks."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}" + (f" ({block.name})" if block.name else "") + "]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            if text is not None:
                parts.append(f"[resource {res.uri}]\n{text}")
            else:
                parts.append(f"[resource {res.uri}: {res.mime_type or 'binary'}, {len(res.blob) * 3 // 4} bytes]")
        else:
            parts.append(f"[{kind or type(block).__name__} content]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _error(call: ToolCall, message: str) -> ToolResult:
    if len(message) > ERROR_CHARS:
        message = message[:ERROR_CHARS] + "…"
    return ToolResult(id=call.id, name=call.name, error=message)


@activity.defn(name=CALL_TOOL)
async def call_tool_activity(call: ToolCall) -> ToolResult:
    """Call the MCP tool ``call`` names on the server in ``call.target`` (``keel.mcp_call_tool``).

    The result's content, as text, goes to the blob store; the tool's errors and arguments it
    rejects come back as ``ToolResult.error``; a server that cannot be reached raises a
    retryable ``ApplicationError`` (type ``MCPServerUnavailable``).
    """
    import anyio
    from mcp import MCPError
    from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND

    try:
        target = json.loads(call.target)
        server = MCPServer.from_json(call.target)
    except (ValueError, TypeError, AttributeError) as e:  # a programming error, not the model's: no retry helps
        raise ApplicationError(
            f"{call.name}: the call's target is not an MCPServer description ({e})", type=BAD_TARGET, non_retryable=True
        ) from None
    # The tool's own name (listed specs carry it); a hand-made call: its name without "<server>_".
    tool = target.get("tool") or call.name.removeprefix(_UNSAFE.sub("_", f"{server.name}_") if server.name else "")
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as e:
        return _error(call, f"invalid arguments for {call.name}: not JSON ({e})")
    if not isinstance(arguments, dict):
        return _error(call, f"invalid arguments for {call.name}: the arguments must be a JSON object")
    meta = {IDEMPOTENCY_META: call.idempotency_key} if call.idempotency_key else None
    try:
        with anyio.fail_after(server.call_timeout_seconds):
            async with AsyncExitStack() as stack:
                client = await _connect(stack, server, server.call_timeout_seconds)
                try:
                    result = await client.call_tool(tool, arguments, meta=meta)
                except MCPError as e:
                    if e.code not in (INVALID_PARAMS, METHOD_NOT_FOUND):
                        raise
                    return _error(call, f"{call.name}: {e.message}")
    except Exception as e:
        raise _unavailable(server, e, server.call_timeout_seconds) from None
    text = content_text(result)
    if result.is_error:
        return _error(call, text or f"{call.name} failed")
    return store_result(call, text)


MCP_ACTIVITIES = [list_tools_activity, call_tool_activity]

__all__ = ["MCPServer", "MCPToolList", "MCP_ACTIVITIES", "call_tool_activity", "content_text", "list_tools_activity", "mcp_tools"]
