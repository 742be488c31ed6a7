"""Summarise a document of any length on Keel: map over its chunks, then reduce.

partition -> scrub PII -> chunk -> one LLM call per chunk (at most ``max_parallel`` in flight)
-> one LLM call that combines the partial summaries into a title, a summary and key points.

A per-run budget bounds the spend: the map stops scheduling chunks once the budget says no,
and what was summarised is still combined, with the result saying the summary is partial.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel import ChunkSpec, ChunkText, LLMResult, PIIPolicy, RunBudget, llm, steps
    from keel.llm import DecisionKind


class ChunkSummary(BaseModel):
    summary: str = Field(min_length=1, description="one or two sentences")


class Summary(BaseModel):
    title: str = Field(min_length=1)
    summary: str = Field(min_length=1, description="one paragraph")
    key_points: list[str] = Field(description="the document's main points, most important first")


@dataclass
class SummarizeInput:
    tenant: str  # whose LLM budget and provider chain pay
    filename: str  # its suffix picks the parser: .md, .txt, .html, .pdf, .docx
    text: str | None = None  # the document as text, or:
    data_b64: str | None = None  # its bytes, base64 (binary formats)
    max_parallel: int = 4  # chunk summaries in flight at once
    budget_usd: float | None = None  # the most this run may spend on LLM calls (None: no limit)
    # Of the budget, the share only the final combine may use: without it a spent budget would
    # leave nothing to combine the partial summaries with.
    reduce_share: float = 0.25
    # Small chunks: each summary call stays short and cheap, and a budget stops at a fine grain.
    chunking: ChunkSpec = field(default_factory=lambda: ChunkSpec(max_tokens=120, overlap_tokens=10))
    pii: PIIPolicy | None = None  # None: the worker's default policy


@dataclass
class SummarizeResult:
    title: str
    summary: str
    key_points: list[str]
    chunks_total: int
    chunks_summarised: int
    stopped_early: bool  # the budget ran out before every chunk was summarised
    degraded: bool = False  # no LLM combine: the summary is the partial summaries joined
    reason: str | None = None  # why stopped early, degraded or chunks failed
    failed_chunks: list[int] = field(default_factory=list)  # chunks whose summary call failed
    llm_requests: int = 0
    cost_usd: float = 0.0
    pii_counts: dict[str, int] = field(default_factory=dict)


CHUNK_SYSTEM = "Summarise the given part of a document in one or two sentences. Keep its facts: numbers, dates, places."
REDUCE_SYSTEM = (
    "You are given summaries of consecutive parts of one document. Write its title, a one-paragraph "
    "summary and its key points, using only what the summaries say."
)


def budget_exhausted(out: LLMResult) -> bool:
    return any(d.kind == DecisionKind.RUN_BUDGET_EXHAUSTED for d in out.decisions)


@workflow.defn
class SummarizeDocument:
    def __init__(self) -> None:
        self._partials: dict[int, str] = {}  # chunk number -> its summary
        self._failed: list[int] = []
        self._stop_reason: str | None = None

    @workflow.query
    def progress(self) -> int:
        """Chunks summarised so far."""
        return len(self._partials)

    @workflow.run
    async def run(self, inp: SummarizeInput) -> SummarizeResult:
        if inp.max_parallel < 1:
            raise ApplicationError("max_parallel must be at least 1", type="InvalidInput", non_retryable=True)
        if not 0 <= inp.reduce_share < 1:
            raise ApplicationError("reduce_share must be in [0, 1)", type="InvalidInput", non_retryable=True)
        if (inp.text is None) == (inp.data_b64 is None):
            raise ApplicationError("give exactly one of text and data_b64", type="InvalidInput", non_retryable=True)
        data = inp.text.encode() if inp.text is not None else base64.b64decode(inp.data_b64)

        elements = await steps.partition(data, filename=inp.filename)
        scrubbed = await steps.scrub_pii(elements, policy=inp.pii)  # before any of it reaches an LLM
        chunks = await steps.chunk(scrubbed, spec=inp.chunking)
        # The chunk texts enter history once here; a very long document would be read a page
        # at a time (read_chunks(start=, limit=)) to keep each history event small.
        texts = await steps.read_chunks(chunks)

        map_budget = reduce_budget = None
        if inp.budget_usd is not None:
            map_budget = RunBudget(usd=inp.budget_usd * (1 - inp.reduce_share))
            reduce_budget = RunBudget(usd=inp.budget_usd)
        # Semaphore waiters wake in order, so chunks start in document order and a run stopped
        # by its budget has summarised the beginning of the document, not random parts of it.
        slots = asyncio.Semaphore(inp.max_parallel)
        await asyncio.gather(*(self._summarise(inp.tenant, c, slots, map_budget) for c in texts))

        result = SummarizeResult(
            title="",
            summary="",
            key_points=[],
            chunks_total=len(texts),
            chunks_summarised=len(self._partials),
            stopped_early=self._stop_reason is not None,
            failed_chunks=sorted(self._failed),
            pii_counts=scrubbed.pii_counts,
        )
        failed = f"{len(self._failed)} chunk(s) could not be summarised" if self._failed else None
        result.reason = "; ".join(r for r in (self._stop_reason, failed) if r) or None
        if self._partials:
            await self._reduce(inp, result, reduce_budget)
        else:
            result.degraded = True
            result.reason = result.reason or "nothing to summarise"
        _, result.cost_usd, attempts = llm.run_usage()
        result.llm_requests = len({a.call for a in attempts if a.call})
        return result

    async def _summarise(self, tenant: str, chunk: ChunkText, slots: asyncio.Semaphore, budget: RunBudget | None) -> None:
        async with slots:
            if self._stop_reason is not None:
                return  # the budget is spent: schedule nothing more
            heading = f"Section: {chunk.section}\n\n" if chunk.section else ""
            out = await llm.complete(heading + chunk.text, ChunkSummary, tenant=tenant, system=CHUNK_SYSTEM, budget=budget)
            if out.ok:
                self._partials[chunk.number] = out.value.summary
            elif budget_exhausted(out):
                self._stop_reason = self._stop_reason or f"budget: {out.reason}"
            else:
                # One bad chunk should not sink the document: the summary says what is missing.
                self._failed.append(chunk.number)

    async def _reduce(self, inp: SummarizeInput, result: SummarizeResult, budget: RunBudget | None) -> None:
        parts = [f"[part {n + 1}] {self._partials[n]}" for n in sorted(self._partials)]
        note = ""
        if result.chunks_summarised < result.chunks_total:
            note = f"(Only {result.chunks_summarised} of the document's {result.chunks_total} parts were summarised.)\n"
        prompt = f"Document: {inp.filename}\n{note}\nSummaries of its parts, in order:\n" + "\n".join(parts)
        out = await llm.complete(prompt, Summary, tenant=inp.tenant, system=REDUCE_SYSTEM, budget=budget)
        if out.ok:
            result.title, result.summary, result.key_points = out.value.title, out.value.summary, out.value.key_points
            return
        # Partial summaries already paid for are still worth returning.
        result.title, result.summary = inp.filename, " ".join(self._partials[n] for n in sorted(self._partials))
        result.degraded = True
        result.reason = "; ".join(r for r in (result.reason, f"combine failed: {out.reason}") if r)
