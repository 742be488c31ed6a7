"""The summarizer on a real Temporal dev server, with a scripted fake LLM."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from keel import ChunkSpec, ProviderConfig, steps
from keel.testing import FakeOpenAI, Step, in_process
from workflows import WORKFLOWS, SummarizeDocument, SummarizeInput

DOC = (Path(__file__).parents[1] / "sample" / "annual_report.md").read_text()
CHUNKS = ChunkSpec(max_tokens=120, overlap_tokens=10)
# A workflow task that keeps failing is retried, not failed: without a limit a broken workflow
# would hang the test instead of failing it.
TIMEOUT = timedelta(minutes=2)
REDUCE_REPLY = {
    "title": "Harbour Light Station: annual report",
    "summary": "A year of storms, repairs and more visitors.",
    "key_points": ["lens cleaned and light range up to 19 nm", "jetty rebuilt", "visitors up a fifth"],
}


def summarize_input(**kwargs) -> SummarizeInput:
    return SummarizeInput(tenant="acme", filename="annual_report.md", text=DOC, chunking=CHUNKS, **kwargs)


@pytest.fixture(scope="module")
async def doc_chunks() -> list[str]:
    """The chunks the workflow will see, cut in-process by the same steps (outside any workflow)."""
    with FakeOpenAI() as llm, in_process(llm):  # no LLM call here: in_process just needs one
        elements = await steps.scrub_pii(await steps.partition(DOC.encode(), filename="annual_report.md"))
        return [c.text for c in await steps.read_chunks(await steps.chunk(elements, spec=CHUNKS))]


def is_reduce(request: dict) -> bool:
    return "key_points" in request["response_format"]["json_schema"]["schema"]["properties"]


def user_text(request: dict) -> str:
    return "\n".join(m["content"] for m in request["messages"] if m["role"] == "user")


def llm_calls_started(history) -> int:
    """``llm.complete`` calls the run started, refused ones included: each plans itself first
    (the ``keel.llm_prepare`` local activity, recorded as a marker in the history)."""
    started = 0
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if event.HasField("marker_recorded_event_attributes") and "data" in marker.details:
            started += json.loads(marker.details["data"].payloads[0].data).get("activity_type") == "keel.llm_prepare"
    return started


def words(request: dict) -> int:
    return sum(len(m["content"].split()) for m in request["messages"])  # how the fake counts tokens


async def test_every_chunk_is_summarised_then_combined(keel_env, keel_fake_llm, doc_chunks):
    chunks = doc_chunks
    assert len(chunks) >= 6  # several sections, one of them split: a real map
    keel_fake_llm.script(
        *(Step.ok(json.dumps({"summary": f"partial-{i}"})) for i in range(len(chunks))),
        Step.ok(json.dumps(REDUCE_REPLY)),
    )
    async with keel_env(WORKFLOWS) as env:
        result = await env.execute(SummarizeDocument.run, summarize_input(max_parallel=3), execution_timeout=TIMEOUT)

    assert result.chunks_total == result.chunks_summarised == len(chunks)
    assert not result.stopped_early and not result.degraded
    assert result.reason is None and result.failed_chunks == []
    assert (result.title, result.summary, result.key_points) == tuple(REDUCE_REPLY.values())

    requests = keel_fake_llm.requests
    # The sample names its retiring keeper: scrubbed before any chunk reached the LLM.
    assert result.pii_counts == {"PERSON": 1}
    assert "Olsen" not in json.dumps(requests) and "<PERSON>" in json.dumps(requests)
    assert len(requests) == result.llm_requests == len(chunks) + 1
    assert [is_reduce(r) for r in requests] == [False] * len(chunks) + [True]
    # Every chunk was summarised exactly once.
    for chunk in chunks:
        assert sum(chunk in user_text(r) for r in requests[:-1]) == 1
    # The combine saw every partial summary once, labelled in document order.
    reduce_prompt = user_text(requests[-1])
    for i in range(len(chunks)):
        assert reduce_prompt.count(f"partial-{i}") == 1
    labels = [reduce_prompt.index(f"[part {n}]") for n in range(1, len(chunks) + 1)]
    assert labels == sorted(labels)


async def test_fan_out_is_bounded_by_max_parallel(keel_env, keel_fake_llm, doc_chunks):
    chunks = doc_chunks
    hang = 1.0  # each map request takes this long at the provider
    keel_fake_llm.script(*(Step.hang(hang) for _ in chunks))
    async with keel_env(WORKFLOWS) as env:
        result = await env.execute(SummarizeDocument.run, summarize_input(max_parallel=2), execution_timeout=TIMEOUT)

    assert result.chunks_summarised == result.chunks_total == len(chunks)
    arrivals = keel_fake_llm.arrivals
    assert len(arrivals) == len(chunks) + 1
    starts = arrivals[: len(chunks)]
    # With at most two requests in flight, a third can only start once an earlier one has
    # answered, i.e. `hang` after it started.
    assert all(starts[i + 2] - starts[i] >= hang * 0.95 for i in range(len(starts) - 2))
    # ...and two did run together (a sequential map would pass the bound above too).
    assert any(starts[i + 1] - starts[i] < hang / 2 for i in range(len(starts) - 1))
    # The combine starts after the last chunk summary came back.
    assert arrivals[-1] - starts[-1] >= hang * 0.95


async def test_budget_stops_the_map_early_and_still_combines(keel_env, keel_fake_llm):
    price = 1.0  # USD per 1k prompt tokens (completions free: every cost follows from the requests)
    budget, reduce_share = 0.6, 0.5
    map_budget = budget * (1 - reduce_share)
    provider = ProviderConfig(
        name="fake", base_url=keel_fake_llm.base_url, model="fake-model", timeout_seconds=10, price_prompt_per_1k=price
    )
    async with keel_env(WORKFLOWS, providers=[provider]) as env:
        # One chunk at a time: the stop point is then exact.
        inp = summarize_input(max_parallel=1, budget_usd=budget, reduce_share=reduce_share)
        handle = await env.client.start_workflow(
            SummarizeDocument.run, inp, id=f"summarize-budget-{uuid.uuid4().hex[:8]}", task_queue=env.task_queue,
            execution_timeout=TIMEOUT,
        )
        result = await handle.result()
        history = await handle.fetch_history()

    assert result.stopped_early
    assert result.reason is not None and "budget" in result.reason
    assert 0 < result.chunks_summarised < result.chunks_total
    assert not result.degraded and result.title and result.key_points  # the reserve paid the combine

    requests = keel_fake_llm.requests
    assert len(requests) < result.chunks_total
    assert [is_reduce(r) for r in requests] == [False] * result.chunks_summarised + [True]
    costs = [words(r) * price / 1000 for r in requests]
    map_costs = costs[:-1]
    # It stopped at the first chunk the spent budget refused, not before and not after.
    assert sum(map_costs[:-1]) < map_budget <= sum(map_costs)
    assert abs(result.cost_usd - sum(costs)) < 1e-6
    # Once refused, no further chunk was even attempted: the summarised ones, the refused one
    # and the combine are all the LLM calls of the run.
    assert llm_calls_started(history) == result.chunks_summarised + 2
    assert f"Only {result.chunks_summarised} of the document's {result.chunks_total} parts" in user_text(requests[-1])
