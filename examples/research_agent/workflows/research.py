"""A research agent on Keel: hybrid search as a tool, several hops, and citations checked.

``IndexNotes``: each note -> partition (markdown) -> chunk -> embed -> index, tagged ``notes``.

``Research``: ``run_agent`` with one tool, ``search_notes``. The model searches as often as it
needs (a question whose answer takes two facts takes two searches: the second query uses what
the first found) and answers with ``Findings(answer, citations)``, the chunk ids it relied on.
Then the workflow checks every cited id against the ids the agent's searches actually returned
and reports ``grounded`` and the ``ungrounded`` ids: a model that cites a chunk it never saw
(or makes an id up) is caught by plain code, not by asking the model again.

``search_notes`` is bound to the run's tenant: the model writes only the query, the tool
searches the tenant ``run_agent`` was given (``ToolCall.tenant``), so no prompt can make it read
another tenant's notes. It runs on this project's worker, which owns the embedded index, and
calls ``keel.steps.hybrid_search`` in-process. Its result starts with a header line, ``found:
<id> <id> ...``: the 200-character preview the agent records for every tool call
(``ToolCallRecord.preview``, in workflow history) therefore holds the ids each search returned,
and the check needs no further I/O.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel import ChunkSpec, Filters, steps
    from keel.agents import AgentLimits, ToolCallRecord, run_agent, tool
    from keel.agents.tools import PREVIEW_CHARS

NOTES_TAG = "notes"
# Notes are short: small chunks keep one fact per chunk, so a citation points at that fact.
NOTE_CHUNKS = ChunkSpec(max_tokens=120, overlap_tokens=20)
HEADER = "found:"
NONE_FOUND = "(none)"
# Hits per search. The header line lists their ids (UUIDs, 36 characters) and must fit, with its
# newline, in the preview the agent records (200 characters): 6 + 4 * 37 + 1 = 155.
TOP_K = 4
assert len(HEADER) + TOP_K * 37 + 1 <= PREVIEW_CHARS


# --- IndexNotes ----------------------------------------------------------------------------


@dataclass
class Note:
    id: str  # stable: re-indexing a note with the same id replaces it
    title: str
    body: str  # markdown


@dataclass
class IndexNotesInput:
    tenant: str
    notes: list[Note]


@dataclass
class IndexNotesResult:
    notes: int
    chunks: int


@workflow.defn
class IndexNotes:
    @workflow.run
    async def run(self, inp: IndexNotesInput) -> IndexNotesResult:
        counts = await asyncio.gather(*(self._index(inp.tenant, n) for n in inp.notes))
        return IndexNotesResult(notes=len(counts), chunks=sum(counts))

    async def _index(self, tenant: str, note: Note) -> int:
        # Notes are small, so their bytes may travel in workflow history. They are not scrubbed
        # (names are what research notes are about); add steps.scrub_pii for personal data.
        markdown = f"# {note.title}\n\n{note.body}".encode()
        elements = await steps.partition(markdown, filename=f"{note.id}.md")
        chunks = await steps.chunk(elements, spec=NOTE_CHUNKS)
        vectors = await steps.embed(chunks)
        await steps.index_document(tenant, note.id, chunks, vectors, source=note.title, tags=[NOTES_TAG])
        return chunks.count


# --- the search_notes tool -------------------------------------------------------------------


def render(chunk_ids: list[str], texts: list[str]) -> str:
    """The tool's result text: the header line of ids, then one line per hit."""
    header = f"{HEADER} {' '.join(chunk_ids) or NONE_FOUND}"
    lines = [f"[{cid}] {' '.join(text.split())}" for cid, text in zip(chunk_ids, texts)]
    return "\n".join([header, *lines] if lines else [header, "No relevant notes for this query."])


@tool(start_to_close=timedelta(seconds=60))
async def search_notes(
    query: Annotated[str, Field(min_length=1, max_length=500, description="what to look for: a few keywords or a short question")],
    tenant: str,
) -> str:
    """Hybrid (semantic + keyword) search of the research notes. Returns the best matching
    chunks, one per line as '[<chunk id>] <text>'. Cite chunks by these ids.

    ``tenant`` is the run's (Keel binds it; the model writes only the query). Runs in-process on
    this worker, the owner of the embedded index. Reads only: safe to retry.
    """
    found = await steps.hybrid_search(tenant, query, top_k=TOP_K, filters=Filters(tags=[NOTES_TAG]))
    hits = found.hits if found.relevant else []
    return render([h.chunk_id for h in hits], [h.text for h in hits])


SEARCH_NOTES = search_notes.keel_tool


# --- Research ----------------------------------------------------------------------------------


class Findings(BaseModel):
    """What the agent must answer with (its JSON schema is sent to the provider)."""

    answer: str = Field(min_length=1, description="the answer to the question, from the notes only")
    citations: list[str] = Field(description="the ids of the chunks the answer relies on, as the searches returned them")


@dataclass
class ResearchQuestion:
    tenant: str
    question: str
    max_turns: int = 8
    budget_usd: float | None = None


@dataclass
class Search:
    """One search the agent made: its query and the chunk ids it returned."""

    query: str
    chunk_ids: list[str] = field(default_factory=list)
    error: str | None = None  # the tool failed: nothing was returned


@dataclass
class ResearchResult:
    ok: bool  # the agent answered (grounded or not: see ``grounded``)
    answer: str = ""
    citations: list[str] = field(default_factory=list)
    grounded: bool = False  # every citation was returned by one of the searches (and there is one)
    ungrounded: list[str] = field(default_factory=list)  # cited ids no search returned
    searches: list[Search] = field(default_factory=list)
    stop: str = ""  # why the agent stopped ("answered", "max_turns", ...)
    reason: str = ""  # why there is no answer
    turns: int = 0
    cost_usd: float = 0.0
    agent_workflow_id: str = ""


SYSTEM = (
    "You answer research questions from a collection of notes, using the search_notes tool. "
    "A question may need several searches: search for one fact, then use what you found to search "
    "for the next. Answer only from the chunks the searches returned, and cite the ids (in square "
    "brackets) of every chunk your answer relies on."
)


def at_least_one_citation(findings: Findings) -> list[str]:
    return [] if findings.citations else ["citations: cite at least one chunk id returned by search_notes"]


def searches_of(calls: list[ToolCallRecord]) -> list[Search]:
    """The agent's searches and the ids each returned, read from the recorded previews.

    Deterministic (workflow history only). A preview whose header line is cut short (no newline
    within it) records no ids: the citations it would back are then reported as ungrounded,
    never wrongly as grounded.
    """
    out = []
    for c in calls:
        if c.name != SEARCH_NOTES.name:
            continue
        try:
            query = str(json.loads(c.arguments).get("query", ""))
        except (ValueError, AttributeError):
            query = c.arguments
        if c.error is not None:
            out.append(Search(query, error=c.error))
            continue
        header, newline, _ = c.preview.partition("\n")
        ids = header.removeprefix(HEADER).split() if newline and header.startswith(HEADER) else []
        out.append(Search(query, [i for i in ids if i != NONE_FOUND]))
    return out


def ungrounded(citations: list[str], searches: list[Search]) -> list[str]:
    retrieved = {cid for s in searches for cid in s.chunk_ids}
    return [c for c in dict.fromkeys(citations) if c not in retrieved]


@workflow.defn
class Research:
    @workflow.run
    async def run(self, q: ResearchQuestion) -> ResearchResult:
        agent = await run_agent(
            q.question,
            Findings,
            tenant=q.tenant,
            tools=[SEARCH_NOTES],
            system=SYSTEM,
            limits=AgentLimits(max_turns=q.max_turns, budget_usd=q.budget_usd),
            validate=at_least_one_citation,
        )
        searches = searches_of(agent.tool_calls)
        result = ResearchResult(
            ok=agent.ok, searches=searches, stop=agent.stop.value, reason=agent.reason, turns=agent.turns,
            cost_usd=agent.cost_usd, agent_workflow_id=agent.workflow_id,
        )
        if not agent.ok:
            return result
        findings = agent.value
        result.answer, result.citations = findings.answer, list(dict.fromkeys(findings.citations))
        result.ungrounded = ungrounded(result.citations, searches)
        result.grounded = bool(result.citations) and not result.ungrounded
        return result
