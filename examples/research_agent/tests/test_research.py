"""The research agent on a real Temporal dev server, with a scripted fake LLM.

The fake model is a function of the conversation (``keel_fake_llm.responder``): it reads the
search results the agent loop sent it, like a real model would, so the second query of a
two-hop question is built from what the first search found, and the citations are ids taken
from the results (or, in the negative tests, ids the run never retrieved).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from temporalio.worker import Replayer

from keel import Filters, KeelPlugin, steps
from keel.agents import ToolCallRecord
from keel.testing import Step
from workflows import WORKFLOWS, IndexNotes, IndexNotesInput, Note, Research, ResearchQuestion
from workflows.research import render, searches_of, ungrounded

TENANT = "acme"
NOTES = Path(__file__).resolve().parent.parent / "notes"
QUESTION = "In which village was the longest-serving head keeper of Cape Arden lighthouse born?"
FIRST_QUERY = "longest-serving head keeper of Cape Arden lighthouse"
MADE_UP = "5f0c1d2e-0000-4000-8000-000000000000"  # shaped like a chunk id, in no index
# A workflow task that keeps failing is retried, not failed: without a limit a broken workflow
# would hang the test instead of failing it.
TIMEOUT = timedelta(minutes=2)


def load_notes() -> list[Note]:
    notes = []
    for path in sorted(NOTES.glob("*.md")):
        title, _, body = path.read_text().partition("\n")
        notes.append(Note(path.stem, title.lstrip("# ").strip(), body.strip()))
    return notes


async def index_notes(env) -> dict[str, list[str]]:
    """Index the notes; the chunk ids of each note (read from the index in-process: the test
    runs in the worker's process, which owns the embedded index)."""
    notes = load_notes()
    indexed = await env.execute(IndexNotes.run, IndexNotesInput(TENANT, notes), execution_timeout=TIMEOUT)
    assert indexed.notes == len(notes) == 5 and indexed.chunks >= len(notes)
    chunks = {}
    for n in notes:
        found = await steps.hybrid_search(TENANT, n.title, top_k=10, filters=Filters(document_id=n.id))
        chunks[n.id] = [h.chunk_id for h in found.hits]
        assert chunks[n.id], n.id
    return chunks


# --- the scripted model ---------------------------------------------------------------------


def tool_results(body: dict) -> list[str]:
    """The full text of every tool result in the conversation, in order."""
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def hits(result: str) -> list[tuple[str, str]]:
    """``(chunk id, text)`` of each ``[<chunk id>] <text>`` line of a search result."""
    return re.findall(r"^\[([^\]]+)\] (.*)$", result, flags=re.M)


def hit_with(result: str, phrase: str) -> tuple[str, str] | None:
    return next((h for h in hits(result) if phrase in h[1]), None)


def search(query: str) -> Step:
    return Step.tool_calls(("search_notes", {"query": query}))


def answer(text: str, citations: list[str]) -> Step:
    return Step.ok(json.dumps({"answer": text, "citations": citations}))


def two_hop_model(body: dict) -> Step:
    """Hop 1 finds who the keeper was; hop 2 searches for that person's birthplace."""
    results = tool_results(body)
    if not results:
        return search(FIRST_QUERY)
    keeper = hit_with(results[0], "longest-serving was")
    if keeper is None:
        return answer("The notes do not say who the keeper was.", [])
    name = re.search(r"longest-serving was ([A-Z]\w+ [A-Z]\w+)", keeper[1]).group(1)
    if len(results) == 1:
        return search(f"where was {name} born")
    born = hit_with(results[1], f"{name} was born")
    if born is None:
        return answer(f"The notes do not say where {name} was born.", [keeper[0]])
    village = re.search(r"village of (\w+)", born[1]).group(1)
    return answer(f"{name}, head keeper from 1921 to 1948, was born in {village}.", [keeper[0], born[0]])


def one_search_then_cite(query: str, cite: Callable[[list[str]], list[str]]) -> Callable[[dict], Step]:
    """One search, then an answer citing ``cite(ids the search returned)``."""

    def model(body: dict) -> Step:
        results = tool_results(body)
        if not results:
            return search(query)
        return answer("The ferry leaves Tallis Harbour at 9:00 and 15:00.", cite([cid for cid, _ in hits(results[0])]))

    return model


# --- tests --------------------------------------------------------------------------------------


async def test_a_two_hop_question_is_answered_with_grounded_citations(research_env, keel_fake_llm):
    async with research_env() as env:
        chunks = await index_notes(env)
        keel_fake_llm.responder = two_hop_model
        handle = await env.client.start_workflow(
            Research.run, ResearchQuestion(TENANT, QUESTION), id=f"research-{uuid.uuid4().hex[:8]}", task_queue=env.task_queue,
            execution_timeout=TIMEOUT,
        )
        result = await handle.result()
        # The workflow code is deterministic: its history (and the grounding check) replays on it.
        replay = await Replayer(workflows=WORKFLOWS, plugins=[KeelPlugin(env.settings)]).replay_workflow(
            await handle.fetch_history(), raise_on_replay_failure=False
        )
        assert replay.replay_failure is None, replay.replay_failure
    requests = keel_fake_llm.requests

    assert result.ok and result.stop == "answered", result.reason
    assert "Harwick" in result.answer and result.turns == 3 and len(requests) == 3
    # Two searches; the second query was built from what the first one found.
    assert [s.query for s in result.searches] == [FIRST_QUERY, "where was Marta Quint born"]
    assert all(s.error is None and s.chunk_ids for s in result.searches)
    # The citations are the two notes' chunks, each returned by its own hop: grounded.
    keeper, born = result.citations
    assert keeper in chunks["keepers"] and keeper in result.searches[0].chunk_ids
    assert born in chunks["quint-family"] and born in result.searches[1].chunk_ids
    assert result.grounded and result.ungrounded == []
    # The model saw a tool that takes a query and nothing else: the tenant is the run's.
    [spec] = requests[0]["tools"]
    assert spec["function"]["name"] == "search_notes"
    assert set(spec["function"]["parameters"]["properties"]) == {"query"}
    # It read the whole result of each hop; the ids recorded for the check are the ones it read.
    for search_, text in zip(result.searches, tool_results(requests[2])):
        assert text.startswith("found: ") and [cid for cid, _ in hits(text)] == search_.chunk_ids
    assert result.agent_workflow_id and result.cost_usd == 0  # the fake provider has no prices


async def test_citations_of_chunks_never_retrieved_are_flagged(research_env, keel_fake_llm):
    async with research_env() as env:
        chunks = await index_notes(env)
        every_chunk = [cid for ids in chunks.values() for cid in ids]
        cited: dict[str, str] = {}

        def cite(returned: list[str]) -> list[str]:
            # The first hit (retrieved), a real chunk this run never retrieved, and a made-up id.
            cited["retrieved"] = returned[0]
            cited["unseen"] = next(cid for cid in every_chunk if cid not in returned)
            return [returned[0], cited["unseen"], MADE_UP]

        keel_fake_llm.responder = one_search_then_cite("ferry timetable from Tallis Harbour", cite)
        result = await env.execute(Research.run, ResearchQuestion(TENANT, "When does the ferry leave?"), execution_timeout=TIMEOUT)

        # Another tenant's run: its searches find nothing, so any citation is ungrounded.
        keel_fake_llm.clear()
        keel_fake_llm.responder = one_search_then_cite("ferry timetable from Tallis Harbour", lambda _: [cited["retrieved"]])
        other = await env.execute(Research.run, ResearchQuestion("globex", "When does the ferry leave?"), execution_timeout=TIMEOUT)

    assert result.ok and len(result.searches) == 1, result.reason
    assert cited["unseen"] not in result.searches[0].chunk_ids
    assert not result.grounded
    assert result.ungrounded == [cited["unseen"], MADE_UP]
    assert result.citations == [cited["retrieved"], cited["unseen"], MADE_UP]

    assert other.ok and other.searches[0].chunk_ids == [], other.searches
    assert not other.grounded and other.ungrounded == [cited["retrieved"]]


def test_the_check_reads_ids_only_from_complete_search_headers():
    ids = ["a" * 36, "b" * 36]
    full = render(ids, ["first chunk", "second\n chunk"])
    assert full.splitlines() == [f"found: {ids[0]} {ids[1]}", f"[{ids[0]}] first chunk", f"[{ids[1]}] second chunk"]

    def call(preview: str, name: str = "search_notes", error: str | None = None) -> ToolCallRecord:
        return ToolCallRecord(1, "c1", name, json.dumps({"query": "q"}), preview, len(preview), error)

    calls = [
        call(full[:200]),
        call(f"found: {ids[1]} {'c' * 30}"),  # the header cut short: its ids are not trusted
        call("", error="ApplicationError: index unavailable"),
        call(full, name="some_other_tool"),
        call(render([], [])),
    ]
    searches = searches_of(calls)
    assert [s.chunk_ids for s in searches] == [ids, [], [], []]
    assert searches[2].error is not None and all(s.query == "q" for s in searches)
    assert ungrounded([ids[1], "c" * 36, ids[1]], searches) == ["c" * 36]
