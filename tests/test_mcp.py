"""MCP servers as agent tools (keel.agents.mcp) against a real MCP server (tests/mcp_server.py,
the official SDK), over stdio and streamable HTTP, in-process and through a Temporal worker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from keel.activities import _runtime
from keel.agents.mcp import (
    BAD_TARGET,
    CALL_TOOL,
    UNAVAILABLE,
    MCPServer,
    call_tool_activity,
    content_text,
    mcp_tools,
)
from keel.agents.tools import PREVIEW_CHARS, ToolCall
from keel.plugin import KeelPlugin
from keel.testing import KeelTestEnv
from keel.testing._env import free_port, isolated_settings
from tests.conftest import opened_history
from tests.mcp_workflows import CallMCPTools, CallMCPToolsInput

SERVER_SCRIPT = str(Path(__file__).with_name("mcp_server.py"))
REPORT = "".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog\n" for i in range(170))
TOOLS = {"demo_add", "demo_report", "demo_fail", "demo_env_var", "demo_sleep", "demo_lookup_v2"}


def stdio_server(**kwargs) -> MCPServer:
    return MCPServer(name="demo", command=[sys.executable, SERVER_SCRIPT, "stdio"], **kwargs)


@pytest.fixture(scope="module")
def http_url():
    """The test server over streamable HTTP on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER_SCRIPT, "http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the MCP test server exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the MCP test server did not accept connections within 30 s")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["stdio", "http"])
def server(request) -> MCPServer:
    if request.param == "stdio":
        return stdio_server()
    return MCPServer(name="demo", url=request.getfixturevalue("http_url"))


_listed: dict[str, dict] = {}


@pytest.fixture
async def specs(server) -> dict:
    """The server's tools by name, listed once per transport (a stdio listing starts a process)."""
    if server.transport not in _listed:
        _listed[server.transport] = {s.name: s for s in await mcp_tools(server)}
    return _listed[server.transport]


@pytest.fixture
def blobs(tmp_path):
    """Results go to the blob store of a throwaway data dir (in-process calls use runtime())."""
    previous = _runtime._runtime
    _runtime._runtime = _runtime.Runtime(isolated_settings("127.0.0.1:7233", None, tmp_path))
    yield _runtime._runtime.blobs
    _runtime._runtime.close()
    _runtime._runtime = previous


def call_of(spec, arguments: dict | str, id: str = "c1") -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=id, name=spec.name, arguments=args, target=spec.target, idempotency_key=f"run-1:{id}")


# --- the description ---------------------------------------------------------------------------


def test_a_server_is_stdio_or_http_and_round_trips_through_json():
    s = stdio_server(env={"A": "1"}, include=["add"], task_queue="tools")
    assert s.transport == "stdio" and MCPServer.from_json(s.to_json()) == s
    h = MCPServer(name="web", url="http://127.0.0.1:1/mcp", headers={"Authorization": "Bearer ${TOKEN}"})
    assert h.transport == "http" and MCPServer.from_json(h.to_json()) == h
    with pytest.raises(ValueError):
        MCPServer(name="neither")
    with pytest.raises(ValueError):
        MCPServer(name="both", command=["x"], url="http://127.0.0.1:1/mcp")


def test_tool_names_are_prefixed_and_sanitised():
    s = MCPServer(name="my.server", url="http://127.0.0.1:1/mcp")
    assert s.tool_name("search") == "my_server_search"
    assert s.tool_name("files/read file") == "my_server_files_read_file"
    long = s.tool_name("x" * 100)
    assert len(long) == 64 and long.startswith("my_server_xxx")


def test_content_blocks_become_text():
    import mcp_types as t

    blocks = [
        t.TextContent(text="hello"),
        t.ImageContent(data="aGVsbG8h", mime_type="image/png"),
        t.ResourceLink(uri="file:///srv/a.txt", name="a.txt"),
        t.EmbeddedResource(resource=t.TextResourceContents(uri="file:///srv/b.txt", text="bee")),
        t.EmbeddedResource(resource=t.BlobResourceContents(uri="file:///srv/c.bin", blob="AAAA", mime_type="application/x")),
    ]
    assert content_text(t.CallToolResult(content=blocks)).split("\n") == [
        "hello",
        "[image: image/png, 6 bytes]",
        "[resource link: file:///srv/a.txt (a.txt)]",
        "[resource file:///srv/b.txt]",
        "bee",
        "[resource file:///srv/c.bin: application/x, 3 bytes]",
    ]
    assert content_text(t.CallToolResult(content=[], structured_content={"n": 1})) == '{"n": 1}'


async def test_a_call_without_a_server_description_is_not_retried():
    with pytest.raises(ApplicationError) as e:
        await call_tool_activity(ToolCall(id="c1", name="x_add", target="not json"))
    assert e.value.type == BAD_TARGET and e.value.non_retryable


# --- in-process, over both transports ----------------------------------------------------------


async def test_lists_the_servers_tools(server, specs):
    by_name = specs
    assert set(by_name) == TOOLS
    add = by_name["demo_add"]
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"} and set(add.parameters["required"]) == {"a", "b"}
    assert add.activity == CALL_TOOL == "keel.mcp_call_tool"
    assert add.task_queue is None and add.start_to_close_seconds == server.call_timeout_seconds
    target = json.loads(add.target)
    assert MCPServer.from_json(add.target) == server and target["tool"] == "add"
    assert json.loads(by_name["demo_lookup_v2"].target)["tool"] == "lookup.v2"


async def test_a_call_stores_its_result_in_the_blob_store(specs, blobs):
    result = await call_tool_activity(call_of(specs["demo_report"], {"lines": 170}))
    assert result.error is None and result.id == "c1" and result.name == "demo_report"
    assert result.size == len(REPORT) > 9_000
    assert result.preview == REPORT[:PREVIEW_CHARS]
    assert blobs.get(result.content_key).decode() == REPORT
    # Only the key and the preview travel (in workflow history): not the 10 KB.
    assert len(json.dumps(result.__dict__)) < 1_000
    # A sanitised name reaches the server's own tool ("lookup.v2").
    looked = await call_tool_activity(call_of(specs["demo_lookup_v2"], {"key": "k"}, id="c2"))
    assert looked.error is None and blobs.get(looked.content_key).decode() == "value of k"


async def test_tool_errors_and_bad_arguments_are_results_not_exceptions(specs, blobs):
    failed = await call_tool_activity(call_of(specs["demo_fail"], {"reason": "boom"}))
    assert failed.content_key == "" and "tool failed on purpose: boom" in failed.error
    assert failed.message()["content"].startswith("error: ")
    bad = await call_tool_activity(call_of(specs["demo_add"], {"a": "one"}))  # a: not an int; b: missing
    assert bad.error and "validation error" in bad.error and bad.content_key == ""
    not_json = await call_tool_activity(call_of(specs["demo_add"], "{a: 1"))
    assert not_json.error and "not JSON" in not_json.error
    not_object = await call_tool_activity(call_of(specs["demo_add"], "[1, 2]"))
    assert not_object.error and "JSON object" in not_object.error


async def test_a_hand_made_call_strips_the_prefix(http_url, blobs):
    # A target that is just the server's description: the tool is the name without "<name>_".
    server = MCPServer(name="demo", url=http_url)
    call = ToolCall(id="c1", name="demo_add", arguments='{"a": 2, "b": 3}', target=server.to_json())
    result = await call_tool_activity(call)
    assert result.error is None and blobs.get(result.content_key).decode() == "5"
    unknown = await call_tool_activity(ToolCall(id="c2", name="demo_nope", target=server.to_json()))
    assert unknown.error and "nope" in unknown.error


async def test_include_keeps_only_the_named_tools(http_url):
    specs = await mcp_tools(MCPServer(name="demo", url=http_url, include=["add", "lookup.v2"], task_queue="tools"))
    assert {s.name for s in specs} == {"demo_add", "demo_lookup_v2"}
    assert {s.task_queue for s in specs} == {"tools"}


async def test_env_references_are_read_from_the_workers_environment(monkeypatch, blobs):
    monkeypatch.setenv("KEEL_MCP_TEST_SECRET", "s3cret")
    server = stdio_server(env={"GREETING": "hi ${KEEL_MCP_TEST_SECRET}"})
    assert "s3cret" not in server.to_json()  # what history records
    call = ToolCall(id="c1", name="demo_env_var", arguments='{"name": "GREETING"}', target=server.to_json())
    result = await call_tool_activity(call)
    assert result.error is None and blobs.get(result.content_key).decode() == "hi s3cret"
    monkeypatch.delenv("KEEL_MCP_TEST_SECRET")
    with pytest.raises(ApplicationError, match="KEEL_MCP_TEST_SECRET") as e:
        await call_tool_activity(call)
    assert e.value.type == UNAVAILABLE


async def test_an_unreachable_server_raises_a_retryable_error(blobs):
    nobody = MCPServer(name="down", url=f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(ApplicationError) as e:
        await mcp_tools(nobody)
    assert e.value.type == UNAVAILABLE and not e.value.non_retryable and "down" in str(e.value)
    with pytest.raises(ApplicationError) as e:
        await call_tool_activity(ToolCall(id="c1", name="down_add", arguments="{}", target=nobody.to_json()))
    assert e.value.type == UNAVAILABLE and not e.value.non_retryable
    missing = MCPServer(name="gone", command=["/nonexistent/keel-mcp-server"])
    with pytest.raises(ApplicationError) as e:
        await mcp_tools(missing)
    assert e.value.type == UNAVAILABLE and not e.value.non_retryable


async def test_a_call_that_takes_too_long_raises_a_retryable_error(http_url, blobs):
    [spec] = await mcp_tools(MCPServer(name="demo", url=http_url, include=["sleep"], call_timeout_seconds=0.5))
    started = time.monotonic()
    with pytest.raises(ApplicationError, match="no answer within 0.5 s") as e:
        await call_tool_activity(call_of(spec, {"seconds": 3}))
    assert e.value.type == UNAVAILABLE and not e.value.non_retryable
    assert time.monotonic() - started < 3


# --- through a Temporal worker -----------------------------------------------------------------


@pytest.fixture
def restore_runtime():
    previous = _runtime._runtime  # KeelPlugin configures this process's runtime for its worker
    yield
    _runtime._runtime = previous


async def test_the_activities_on_a_temporal_worker(temporal_settings, http_url, tmp_path, restore_runtime):
    server = MCPServer(name="demo", url=http_url)
    calls = [
        ("demo_report", json.dumps({"lines": 170})),
        ("demo_add", json.dumps({"a": 20, "b": 22})),
        ("demo_fail", json.dumps({"reason": "boom"})),
        ("demo_add", json.dumps({"a": "twenty"})),
    ]
    async with KeelTestEnv(
        workflows=[CallMCPTools],  # KeelPlugin registers the MCP activities
        address=temporal_settings.temporal_address,
        fake_llm=False,
        data_dir=tmp_path,
    ) as env:
        handle = await env.client.start_workflow(
            CallMCPTools.run, CallMCPToolsInput(server, calls), id=f"test-mcp-{time.time_ns()}", task_queue=env.task_queue
        )
        out = await handle.result()
        assert set(out.tool_names) == TOOLS
        report, added, failed, bad = out.results
        blobs = _runtime.runtime().blobs
        assert report.error is None and blobs.get(report.content_key).decode() == REPORT
        assert report.preview == REPORT[:PREVIEW_CHARS]
        assert added.error is None and blobs.get(added.content_key).decode() == "42"
        assert "tool failed on purpose: boom" in failed.error
        assert bad.error and bad.content_key == ""

        # The history holds the tool list and the previews, never a full result.
        history = await handle.fetch_history()
        recorded = await opened_history(env.client, history.events)
        assert b"line 0000" in recorded and b"line 0169" not in recorded
        assert b"keel.mcp_list_tools" in recorded and b"demo_lookup_v2" in recorded

        # A replay takes the tool list and the results from the history (no activity runs).
        replay = await Replayer(workflows=[CallMCPTools], plugins=[KeelPlugin(env.settings)]).replay_workflow(
            WorkflowHistory.from_json(handle.id, history.to_json())
        )
        assert replay.replay_failure is None
