"""Keel's overhead: an ask through Temporal (``AnswerQuestion``) vs the same steps in-process.

    .venv/bin/python bench/overhead.py [--asks 20] [--warmup 3]

Starts its own Temporal dev server (``keel.testing.DevServer``, Keel's dynamic config), a fake
LLM on loopback (``FakeOpenAI``) and one Keel worker (the same ``Stack`` code as ``keel up``),
and ingests ``examples/corpus`` twice: through ``IngestCorpus`` into the worker's index, and
in-process (the same steps outside a workflow) into a separate data dir for this process's own
runtime (an embedded index may be opened by one process only). Then, for an LLM latency of
0 s (``Step.answer()``) and 1 s (``Step.hang(1.0)``), it makes ``--asks`` asks one at a time
each way, after ``--warmup`` asks:

* Keel: ``client.execute_workflow(AnswerQuestion.run, ...)`` (scrub_pii → hybrid_search →
  llm.complete), wall time from the client;
* in-process: ``steps.scrub_pii`` → ``steps.hybrid_search`` → ``llm.complete`` with the same
  prompt, schema and citation check, called outside a workflow.

Prints ONE JSON line on stdout::

    {"keel_p50_s": {"0": a, "1": b}, "inprocess_p50_s": {"0": c, "1": d}, "ratio": {"0": a/c, "1": b/d}}

and, on stderr, p95s, failures, the in-process steps' times, and the breakdown of Keel's asks
from their event histories (median over the asks: each event's time, and each hop: workflow task
and activity dispatch (scheduled→started) and run (started→completed; a workflow task's run
includes its local activities)), which shows where the overhead sits. The machine's load
average is printed too: other processes on the box skew every number here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keel.offline import configure_offline  # noqa: E402

configure_offline()

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from keel import llm, steps  # noqa: E402
from keel.activities import _runtime  # noqa: E402
from keel.config import KeelSettings  # noqa: E402
from keel.llm import prompts  # noqa: E402
from keel.plugin import KeelPlugin  # noqa: E402
from keel.stack import Stack  # noqa: E402
from keel.testing import DevServer, FakeOpenAI, Step  # noqa: E402
from keel.types import RetrievalSettings  # noqa: E402
from keel.workflows import AnswerQuestion, IngestCorpus  # noqa: E402

TENANT = "bench"
CORPUS = ROOT / "examples" / "corpus"
QUESTIONS = [  # examples/CORPUS.md "Sample questions" and facts of the corpus
    "When was the Fresnel lens at Greyhaven Point restored?",
    "How much does a family membership cost?",
    "When was the Saltmarrow Island solar conversion completed?",
    "On which day is the Lantern Festival held?",
]
LATENCIES = {"0": Step.answer(), "1": Step.hang(1.0)}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if ordered else float("nan")


@dataclass
class Side:
    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    histories: list[list[Event]] = field(default_factory=list)  # Keel only
    edges: list[tuple[float, float]] = field(default_factory=list)  # Keel only: (submit→started, completed→result) s


# --- Keel: AnswerQuestion through Temporal -------------------------------------------------------


async def keel_ask(client: Client, settings: KeelSettings, question: str, label: str) -> tuple[float, str | None, str]:
    wid = f"bench-overhead-{label}-{uuid.uuid4().hex[:10]}"
    t0 = time.perf_counter()
    wall0 = time.time()
    result = await client.execute_workflow(
        AnswerQuestion.run, settings.ask_input(TENANT, question), id=wid, task_queue=settings.index_task_queue
    )
    seconds = time.perf_counter() - t0
    wall1 = wall0 + seconds
    problem = None
    if not result.answerable or result.degraded:
        problem = f"{question!r}: answerable={result.answerable} degraded={result.degraded} ({result.degraded_reason})"
    return seconds, problem, f"{wid}|{wall0}|{wall1}"


def _marker_activity(e) -> str:
    try:
        data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
        return json.loads(data).get("activity_type", "?")
    except Exception:  # noqa: BLE001 - best effort label
        return "?"


def _scheduled_id(e) -> int | None:
    for attr in ("workflow_task_started", "workflow_task_completed", "activity_task_started", "activity_task_completed"):
        if e.HasField(f"{attr}_event_attributes"):
            return getattr(e, f"{attr}_event_attributes").scheduled_event_id
    return None


@dataclass
class Event:
    id: int
    kind: str  # EventType name without the prefix
    label: str
    t: float  # server time, s since the epoch
    scheduled: int | None = None  # for WFT/activity started/completed: its scheduled event id


def history_events(history) -> list[Event]:
    events: list[Event] = []
    names: dict[int, str] = {}  # scheduled event id -> what it schedules
    wft = 0
    for e in history.events:
        kind = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        sched = _scheduled_id(e)
        if kind == "WORKFLOW_TASK_SCHEDULED":
            wft += 1
            names[e.event_id] = f"WFT{wft}"
            label = f"{kind} (WFT{wft})"
        elif kind == "ACTIVITY_TASK_SCHEDULED":
            a = e.activity_task_scheduled_event_attributes
            names[e.event_id] = a.activity_type.name
            label = f"{kind} ({a.activity_type.name} @{a.task_queue.name})"
        elif sched is not None:
            label = f"{kind} ({names.get(sched, '?')})"
        elif kind == "MARKER_RECORDED":
            label = f"{kind} (local activity {_marker_activity(e)})"
        elif kind == "WORKFLOW_EXECUTION_SIGNALED":
            label = f"{kind} ({e.workflow_execution_signaled_event_attributes.signal_name})"
        else:
            label = kind
        events.append(Event(e.event_id, kind, label, e.event_time.ToMicroseconds() / 1e6, sched))
    return events


def hops(events: list[Event]) -> dict[str, float]:
    """Seconds per hop: every WFT's dispatch (scheduled→started) and run (started→completed,
    local activities included), every activity's dispatch and run, and their sums."""
    by_id = {e.id: e for e in events}
    started: dict[int, float] = {}
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.scheduled is None:
            continue
        what = by_id[e.scheduled].label.split("(", 1)[1].split(" @")[0].rstrip(")")
        if e.kind.endswith("_STARTED"):
            started[e.scheduled] = e.t
            out[f"{what} dispatch (scheduled→started)"] = e.t - by_id[e.scheduled].t
        elif e.kind.endswith("_COMPLETED") and e.scheduled in started:
            out[f"{what} run (started→completed)"] = e.t - started[e.scheduled]
    for k, v in list(out.items()):
        group = "workflow tasks" if k.startswith("WFT") else "activities"
        out[f"Σ {group}: {k.split(' ', 1)[1].split(' (')[0]}"] += v
    return dict(out)


async def history_of(client: Client, wid: str) -> list[Event]:
    return history_events(await client.get_workflow_handle(wid).fetch_history())


async def run_keel(client: Client, settings: KeelSettings, n: int, warmup: int, label: str) -> Side:
    side = Side()
    for i in range(warmup):
        await keel_ask(client, settings, QUESTIONS[i % len(QUESTIONS)], f"{label}-warm")
    stamps = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        try:
            seconds, problem, stamp = await keel_ask(client, settings, q, label)
        except Exception as e:  # noqa: BLE001 - counted and reported
            side.failures.append(f"{q!r}: {type(e).__name__}: {e}")
            log(f"  keel L={label} ask {i}: FAILED {type(e).__name__}: {e}")
            continue
        side.times.append(seconds)
        stamps.append(stamp)
        if problem:
            side.failures.append(problem)
            log(f"  keel L={label} ask {i}: {problem}")
    for stamp in stamps:  # after timing: fetching histories must not load the timed asks
        wid, wall0, wall1 = stamp.split("|")
        events = await history_of(client, wid)
        side.histories.append(events)
        side.edges.append((events[0].t - float(wall0), float(wall1) - events[-1].t))
    return side


# --- in-process: the same steps outside a workflow ---------------------------------------------


async def inprocess_ask(settings: KeelSettings, question: str) -> tuple[float, str | None, dict[str, float]]:
    t0 = time.perf_counter()
    scrubbed = await steps.scrub_pii(question, policy=settings.pii_policy)
    t1 = time.perf_counter()
    found = await steps.hybrid_search(TENANT, scrubbed.text, settings=RetrievalSettings())
    t2 = time.perf_counter()
    if not found.relevant:
        return time.perf_counter() - t0, f"{question!r}: not answerable (best score {found.best_score:.3f})", {}
    out = await llm.complete(
        prompts.answer_messages(settings.prompt_version, scrubbed.text, found),
        prompts.AnswerPayload,
        tenant=TENANT,
        schema=prompts.answer_schema(len(found.hits)),
        validate=lambda reply: prompts.citation_errors(reply, found),
    )
    t3 = time.perf_counter()
    problem = None if out.ok else f"{question!r}: degraded ({out.reason})"
    return t3 - t0, problem, {"scrub_pii": t1 - t0, "hybrid_search": t2 - t1, "llm.complete": t3 - t2}


async def run_inprocess(settings: KeelSettings, n: int, warmup: int, label: str) -> tuple[Side, dict[str, list[float]]]:
    side, parts = Side(), defaultdict(list)
    for i in range(warmup):
        await inprocess_ask(settings, QUESTIONS[i % len(QUESTIONS)])
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        try:
            seconds, problem, split = await inprocess_ask(settings, q)
        except Exception as e:  # noqa: BLE001 - counted and reported
            side.failures.append(f"{q!r}: {type(e).__name__}: {e}")
            log(f"  in-process L={label} ask {i}: FAILED {type(e).__name__}: {e}")
            continue
        side.times.append(seconds)
        for k, v in split.items():
            parts[k].append(v)
        if problem:
            side.failures.append(problem)
            log(f"  in-process L={label} ask {i}: {problem}")
    return side, parts


async def ingest_inprocess(settings: KeelSettings) -> int:
    """IngestDocument's steps, outside a workflow, into this process's runtime."""
    manifest = await steps.list_documents(TENANT, [str(CORPUS)])
    entries = await steps.manifest_page(manifest, 0, manifest.count)
    chunks_total = 0
    for doc in entries:
        elements = await steps.partition(doc.content_hash, filename=doc.path)
        scrubbed = await steps.scrub_pii(elements, policy=settings.pii_policy)
        chunks = await steps.chunk(scrubbed, spec=settings.chunk_spec)
        vectors = await steps.embed(chunks, spec=settings.embedding_spec)
        await steps.index_document(
            TENANT, doc.document_id, chunks, vectors, source=doc.path, version=doc.indexed_version, tags=doc.tags, date=doc.date
        )
        chunks_total += chunks.count
    return chunks_total


# --- the breakdown -----------------------------------------------------------------------------


def breakdown(side: Side, label: str) -> None:
    if not side.histories:
        return
    shapes = defaultdict(list)
    for h in side.histories:
        shapes[tuple(e.label for e in h)].append(h)
    shape, histories = max(shapes.items(), key=lambda kv: len(kv[1]))
    log(f"\nKeel L={label}s: one ask's event history, in time order (median over the {len(histories)} of "
        f"{len(side.histories)} asks with this event sequence; ms since WORKFLOW_EXECUTION_STARTED)")
    log(f"  {'client: execute_workflow called → WORKFLOW_EXECUTION_STARTED':<90} {1000 * p50([e[0] for e in side.edges]):7.1f}")
    at = [p50([h[i].t - h[0].t for h in histories]) * 1000 for i in range(len(shape))]
    previous = 0.0
    for i in sorted(range(len(shape)), key=lambda i: (at[i], i)):
        log(f"  {i + 1:>3} {shape[i]:<80} at {at[i]:7.1f}  +{at[i] - previous:6.1f}")
        previous = at[i]
    log(f"  {'client: WORKFLOW_EXECUTION_COMPLETED → result returned':<90} {1000 * p50([e[1] for e in side.edges]):7.1f}")
    log(f"  {'client wall time (p50 of all asks)':<90} {1000 * p50(side.times):7.1f}")
    for s in shapes:
        if s != shape:
            log(f"  ({len(shapes[s])} ask(s) had another event sequence, of {len(s)} events)")
    per = [hops(h) for h in histories]
    log(f"  hops (ms, median over {len(per)} asks):")
    keys = sorted(per[0], key=lambda k: (k.startswith("Σ"), k.startswith("Σ") and k or ""))
    for k in keys:
        log(f"    {k:<70} {1000 * p50([p.get(k, 0.0) for p in per]):7.1f}")


# --- main --------------------------------------------------------------------------------------


async def bench(args, tmp: Path, cleanups: list) -> dict:
    server = DevServer()
    cleanups.append(server.stop)
    fake = FakeOpenAI()
    fake.start()
    cleanups.append(fake.stop)
    log("load average (1/5/15 min): %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    t = time.perf_counter()
    server.start()
    log(f"dev server on {server.address} ({time.perf_counter() - t:.1f}s)")

    name = uuid.uuid4().hex[:6]
    common = dict(llm_base_url=fake.base_url, llm_start_local=False, llm_timeout_seconds=10, cache_enabled=False)
    settings = KeelSettings(
        data_dir=tmp / "keel",
        temporal_address=server.address,
        temporal_ui_port=server.settings.temporal_ui_port,
        task_queue=f"bench-{name}",
        index_task_queue=f"bench-{name}-index",
        **common,
    )
    stack = Stack(settings)
    cleanups.append(lambda: stack.down(say=lambda _: None))
    stack.up(workers=1, say=lambda _: None)
    client = await Client.connect(settings.temporal_address, plugins=[KeelPlugin(settings)])

    # The in-process runtime: its own data dir (index, blobs), the same fake LLM.
    local = KeelSettings(data_dir=tmp / "inprocess", temporal_address=server.address, **common)
    _runtime.configure(local)
    cleanups.append(lambda: _runtime.runtime().close())

    t = time.perf_counter()
    keel_ingest = asyncio.create_task(
        client.execute_workflow(
            IngestCorpus.run, settings.ingest_input(TENANT, [str(CORPUS)]), id=f"bench-overhead-ingest-{name}",
            task_queue=settings.task_queue,
        )
    )
    chunks = await ingest_inprocess(local)
    log(f"in-process ingest: {chunks} chunks ({time.perf_counter() - t:.1f}s)")
    summary = await keel_ingest
    log(f"Keel ingest: {summary.indexed} documents, {summary.chunks} chunks, {summary.failed} failed "
        f"({time.perf_counter() - t:.1f}s)")
    if summary.failed or summary.chunks != chunks or summary.indexed != summary.total:
        # Compare like with like: both indexes must hold the whole corpus.
        raise RuntimeError(f"the two ingests differ: Keel {summary}, in-process {chunks} chunks")

    keel, inproc, parts = {}, {}, {}
    for label, step in LATENCIES.items():
        fake.clear()
        fake.default = step
        t = time.perf_counter()
        keel[label] = await run_keel(client, settings, args.asks, args.warmup, label)
        log(f"Keel L={label}s: p50 {p50(keel[label].times):.3f}s p95 {p95(keel[label].times):.3f}s "
            f"({len(keel[label].failures)} failures, {time.perf_counter() - t:.1f}s)")
        t = time.perf_counter()
        inproc[label], parts[label] = await run_inprocess(local, args.asks, args.warmup, label)
        log(f"in-process L={label}s: p50 {p50(inproc[label].times):.3f}s p95 {p95(inproc[label].times):.3f}s "
            f"({len(inproc[label].failures)} failures, {time.perf_counter() - t:.1f}s)")
    fake.default = Step.answer()
    log("load average (1/5/15 min): %.2f %.2f %.2f" % os.getloadavg())

    log("\nsummary (s)            p50       p95    failures")
    for label in LATENCIES:
        for what, side in (("keel", keel[label]), ("in-process", inproc[label])):
            log(f"  L={label}s {what:<12} {p50(side.times):8.3f}  {p95(side.times):8.3f}  {len(side.failures):>5}")
    for label in LATENCIES:
        log(f"  in-process L={label}s steps (p50 ms): "
            + ", ".join(f"{k} {1000 * p50(v):.1f}" for k, v in parts[label].items()))
    for label in LATENCIES:
        breakdown(keel[label], label)
    for label in LATENCIES:
        for what, side in (("keel", keel[label]), ("in-process", inproc[label])):
            for f in side.failures:
                log(f"  failure L={label}s {what}: {f}")

    def r(x: float) -> float:
        return round(x, 4)

    return {
        "keel_p50_s": {k: r(p50(v.times)) for k, v in keel.items()},
        "inprocess_p50_s": {k: r(p50(v.times)) for k, v in inproc.items()},
        "ratio": {k: r(p50(keel[k].times) / p50(inproc[k].times)) for k in keel},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asks", type=int, default=20, help="timed asks per side and latency")
    parser.add_argument("--warmup", type=int, default=3, help="untimed asks before them")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir (worker logs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keel-overhead-"))
    cleanups: list = []
    try:
        report = asyncio.run(bench(args, tmp, cleanups))
    except BaseException:
        log(traceback.format_exc())
        log(f"worker logs: {tmp / 'keel' / 'logs'}")
        report = None
    finally:
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - clean up the rest anyway
                log(f"cleanup: {type(e).__name__}: {e}")
        if not args.keep and report is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if report is None:
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
