"""How big an agent's workflow history gets: N tool calls with 10 KB results each.

    .venv/bin/python bench/agent_history.py --tool-calls 200

Starts a Temporal dev server, a scripted model on loopback (``FakeOpenAI``: one tool call per
turn until the conversation holds N results, then a final answer) and a worker with a user
workflow that runs ``keel.agents.run_agent`` with one tool returning 10 KB. Prints ONE JSON line:

    {"tool_calls": n, "completed": true|false, "history_bytes": b, "transcript_bytes": t}

``history_bytes``: the protobuf size of every event of every history involved (the caller's run
and each run of the agent's workflow, continue-as-new included): what counts towards
Temporal's limits. ``transcript_bytes``: the whole conversation as the model last saw it (JSON).
On stderr: the runs, and what the naive design (the whole transcript as each turn's input, tool
results inline) would have put in history for the same conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.offline import configure_offline  # noqa: E402

configure_offline()

from pydantic import BaseModel  # noqa: E402
from temporalio import workflow  # noqa: E402

from keel.agents import AgentLimits, AgentResult, run_agent, tool  # noqa: E402
from keel.testing import KeelTestEnv, Step  # noqa: E402

RESULT_BYTES = 10_000


@tool
def fetch_page(n: int) -> str:
    """Page n of the archive (about 10 KB)."""
    return (f"[page {n}] " + "archive text " * 1000)[:RESULT_BYTES]


class Report(BaseModel):
    pages_read: int


@dataclass
class Task:
    request: str
    max_turns: int


@workflow.defn(sandboxed=False)
class ReadArchive:
    @workflow.run
    async def run(self, task: Task) -> AgentResult[Report]:
        return await run_agent(task.request, Report, tenant="bench", tools=[fetch_page], limits=AgentLimits(max_turns=task.max_turns))


async def history_bytes(client, workflow_id: str) -> tuple[int, int]:
    """(bytes, runs) over every run of ``workflow_id``."""
    total, runs = 0, 0
    async for wf in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        history = await client.get_workflow_handle(workflow_id, run_id=wf.run_id).fetch_history()
        total += sum(e.ByteSize() for e in history.events)
        runs += 1
    return total, runs


def naive_bytes(messages: list[dict]) -> int:
    """History of the naive design: each turn's input is the whole transcript so far, and each
    tool result travels in history inline (as an activity result)."""
    total, size = 0, 0
    for m in messages:
        if m["role"] == "assistant":
            total += size  # this turn's input
        if m["role"] == "tool":
            total += len(m.get("content") or "")  # the tool activity's result
        size += len(json.dumps(m))
    return total


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool-calls", type=int, default=200)
    args = parser.parse_args()
    n = args.tool_calls

    def model(body: dict) -> Step:
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        return Step.tool_calls(("fetch_page", {"n": done})) if done < n else Step.ok(json.dumps({"pages_read": done}))

    t0 = time.perf_counter()
    async with KeelTestEnv([ReadArchive], [fetch_page]) as env:
        env.fake_llm.responder = model
        wid = f"agent-history-{n}"
        try:
            result = await env.execute(ReadArchive.run, Task(f"Read {n} pages.", n + 5), id=wid, execution_timeout=timedelta(hours=1))
        except Exception as e:  # noqa: BLE001 - reported as not completed
            print(f"the run failed: {e}", file=sys.stderr)
            result = None
        caller, _ = await history_bytes(env.client, wid)
        agent, runs = await history_bytes(env.client, f"{wid}-agent-1")
        from keel.activities.llm import conversation

        messages = conversation(result.conversation)[0] if result is not None else []
    completed = bool(result is not None and result.ok and len(result.tool_calls) == n)
    transcript = len(json.dumps(messages))
    print(
        f"{n} tool calls in {time.perf_counter() - t0:.0f} s; agent workflow: {runs} runs (continue-as-new), "
        f"{agent} B; caller: {caller} B; naive design (whole transcript per turn, results inline): "
        f"{naive_bytes(messages)} B",
        file=sys.stderr,
    )
    print(json.dumps({"tool_calls": n, "completed": completed, "history_bytes": caller + agent, "transcript_bytes": transcript}))
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
