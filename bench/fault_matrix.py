"""Fault matrix: every fault kind against a chain of [faulty provider → healthy provider].

    .venv/bin/python bench/fault_matrix.py [--runs 20] [--concurrency 5] [--faults 429,500,...]
    .venv/bin/python bench/fault_matrix.py --no-fallback    # the faulty provider alone

Starts its own Temporal dev server (or uses ``--temporal-address``), two fault-injecting
providers on loopback and one Keel worker (the same ``Stack`` code as ``keel up``), ingests one
document, then for each fault kind makes the faulty provider fail every request that way and
runs ``--runs`` asks. Each run must end in a defined state within ``--deadline`` seconds:

* answered (by the faulty provider or, after falling over, by the healthy one), or
* a typed failure: a failed run with a typed error, or a degraded answer whose attempts carry
  the error types; both are visible in the Temporal UI;
* otherwise it is counted as stuck.

Prints a table, then one JSON line over all runs:
``{"runs": n, "answered": a, "answered_by_fallback": f, "typed_failures": t, "stuck": s,
"p95_seconds": x, "retries_per_run": r}`` (retries: Temporal attempts after the first of an
LLM call). The circuit breaker is on, as in production; it is closed before each fault kind.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.offline import configure_offline  # noqa: E402

configure_offline()

from temporalio.client import Client, WorkflowFailureError  # noqa: E402
from temporalio.service import RPCError  # noqa: E402

from keel.config import KeelSettings  # noqa: E402
from keel.plugin import KeelPlugin  # noqa: E402
from keel.workflows import AskResult  # noqa: E402
from keel.llm.providers import ProviderConfig, provider_health_id  # noqa: E402
from keel.stack import Stack  # noqa: E402
from keel.testing.fake_openai import FakeOpenAI, Step  # noqa: E402
from keel.workflows import AnswerQuestion, IngestCorpus  # noqa: E402
from keel.workflows.ingest import failure_reason  # noqa: E402

TENANT = "bench"
DOCUMENT = ROOT / "examples" / "corpus" / "history.txt"
QUESTIONS = [
    "When was Greyhaven Point Light first lit?",
    "How many founding members did the cooperative have?",
    "When did the Keepers' Archive open?",
    "Which reef had wrecked at least nineteen vessels?",
    "When was Saltmarrow Island Light completed?",
]


def fault_steps(timeout: float) -> dict[str, Step]:
    """Every fault kind, as the faulty provider's answer to every request."""
    return {
        "429": Step.rate_limited("1"),
        "500": Step.server_error(500),
        "503": Step.server_error(503),
        "hang": Step.hang(timeout * 3),
        "reset": Step.reset(),
        "malformed": Step.malformed(),
        "schema": Step.schema_violation(),
        "empty": Step.empty(),
        "slow_stream": Step.slow_stream(timeout * 2),
        "401": Step.client_error(401),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Outcome:
    state: str  # "answered" | "typed_failure" | "stuck"
    seconds: float
    by_fallback: bool = False
    retries: int = 0
    requests: int = 0
    error_type: str = ""


async def one_run(client: Client, settings: KeelSettings, question: str, deadline: float) -> Outcome:
    inp = dataclasses.replace(settings.ask_input(TENANT, question), use_cache=False)
    started = time.monotonic()
    handle = await client.start_workflow(
        AnswerQuestion.run, inp, id=f"bench-ask-{uuid.uuid4().hex[:10]}", task_queue=settings.index_task_queue
    )
    try:
        result: AskResult = await asyncio.wait_for(handle.result(), deadline)
    except asyncio.TimeoutError:
        return Outcome("stuck", time.monotonic() - started)
    except WorkflowFailureError as e:
        kind, _ = failure_reason(e.cause)
        return Outcome("typed_failure", time.monotonic() - started, error_type=kind)
    seconds = time.monotonic() - started
    tried = [a for a in result.provider_attempts if a.outcome.value != "skipped"]
    retries = sum(1 for a in tried if a.attempt > 1)
    if result.answerable and not result.degraded:
        return Outcome("answered", seconds, result.provider != "faulty", retries, len(tried))
    types = sorted({a.error_type or a.outcome.value for a in result.provider_attempts})  # CircuitOpen: skipped
    return Outcome("typed_failure", seconds, False, retries, len(tried), "/".join(types))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if ordered else 0.0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="asks per fault kind")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0, help="the faulty provider's timeout (s)")
    parser.add_argument("--deadline", type=float, default=180.0, help="a run still open after this is stuck")
    parser.add_argument("--faults", default="all", help="comma-separated subset of: " + ",".join(fault_steps(1)))
    parser.add_argument("--temporal-address", help="use this server (e.g. keel up's 127.0.0.1:7233)")
    parser.add_argument("--no-fallback", action="store_true", help="the faulty provider alone: runs end typed")
    args = parser.parse_args()
    steps = fault_steps(args.timeout)
    kinds = list(steps) if args.faults == "all" else args.faults.split(",")

    data_dir = Path(tempfile.mkdtemp(prefix="keel-fault-matrix-"))
    server = None
    if args.temporal_address is None:
        server = Stack(KeelSettings(data_dir=data_dir / "temporal", temporal_address=f"127.0.0.1:{free_port()}",
                                    temporal_ui_port=free_port(), llm_start_local=False))
        server.up(workers=0, say=lambda _: None)
    address = args.temporal_address or server.settings.temporal_address

    with FakeOpenAI(model="faulty-model") as faulty, FakeOpenAI(model="healthy-model") as healthy:
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        settings = KeelSettings(
            data_dir=data_dir / "keel",
            temporal_address=address,
            task_queue=queue,
            index_task_queue=f"{queue}-index",
            llm_start_local=False,
            providers=[
                ProviderConfig(name="faulty", base_url=faulty.base_url, model="faulty-model",
                               timeout_seconds=args.timeout, max_attempts=3, max_concurrency=args.concurrency),
                ProviderConfig(name="healthy", base_url=healthy.base_url, model="healthy-model",
                               timeout_seconds=30, max_concurrency=args.concurrency),
            ][: 1 if args.no_fallback else 2],
        )
        stack = Stack(settings)
        stack.up(workers=1, say=lambda _: None)
        try:
            client = await Client.connect(address, plugins=[KeelPlugin(settings)])
            summary = await client.execute_workflow(
                IngestCorpus.run, settings.ingest_input(TENANT, [str(DOCUMENT)]),
                id=f"bench-ingest-{uuid.uuid4().hex[:8]}", task_queue=queue,
            )
            assert summary.indexed == 1, summary
            table: dict[str, list[Outcome]] = {}
            for kind in kinds:
                faulty.clear()
                faulty.default = steps[kind]
                await close_circuit(client, queue)
                gate = asyncio.Semaphore(args.concurrency)

                async def run(i: int) -> Outcome:
                    async with gate:
                        return await one_run(client, settings, QUESTIONS[i % len(QUESTIONS)], args.deadline)

                table[kind] = await asyncio.gather(*(run(i) for i in range(args.runs)))
                print_row(kind, table[kind], first=kind == kinds[0])
        finally:
            stack.down(say=lambda _: None)
            if server is not None:
                server.down(say=lambda _: None)
            shutil.rmtree(data_dir, ignore_errors=True)

    everything = [o for outcomes in table.values() for o in outcomes]
    print(json.dumps({
        "runs": len(everything),
        "answered": sum(o.state == "answered" for o in everything),
        "answered_by_fallback": sum(o.state == "answered" and o.by_fallback for o in everything),
        "typed_failures": sum(o.state == "typed_failure" for o in everything),
        "stuck": sum(o.state == "stuck" for o in everything),
        "p95_seconds": round(p95([o.seconds for o in everything]), 2),
        "retries_per_run": round(sum(o.retries for o in everything) / max(1, len(everything)), 2),
    }))
    stuck = sum(o.state == "stuck" for o in everything)
    unanswered = [k for k, outcomes in table.items() if any(o.state != "answered" for o in outcomes)]
    return 1 if stuck or (unanswered and not args.no_fallback) else 0


async def close_circuit(client: Client, queue: str) -> None:
    try:
        await client.get_workflow_handle(provider_health_id(queue, "faulty")).signal("reset")
    except RPCError:
        pass  # never opened


def print_row(kind: str, outcomes: list[Outcome], *, first: bool) -> None:
    if first:
        print(f"{'fault':<12}{'runs':>5}{'answered':>9}{'fallback':>9}{'typed':>6}{'stuck':>6}"
              f"{'p50 s':>7}{'p95 s':>7}{'retries/run':>12}{'requests/run':>13}  failure types")
    seconds = [o.seconds for o in outcomes]
    types = sorted({o.error_type for o in outcomes if o.error_type})
    print(
        f"{kind:<12}{len(outcomes):>5}{sum(o.state == 'answered' for o in outcomes):>9}"
        f"{sum(o.state == 'answered' and o.by_fallback for o in outcomes):>9}"
        f"{sum(o.state == 'typed_failure' for o in outcomes):>6}{sum(o.state == 'stuck' for o in outcomes):>6}"
        f"{sorted(seconds)[len(seconds) // 2]:>7.2f}{p95(seconds):>7.2f}"
        f"{sum(o.retries for o in outcomes) / len(outcomes):>12.2f}{sum(o.requests for o in outcomes) / len(outcomes):>13.2f}"
        f"  {', '.join(types)}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
