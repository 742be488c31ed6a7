"""Support triage on Keel: a knowledge base of help articles, and tickets triaged against it.

``IndexArticles``: each article -> partition (markdown) -> scrub PII -> chunk -> embed -> index,
tagged ``kb``.

``TriageTicket``: scrub the ticket -> hybrid search of the ``kb`` articles -> one validated LLM
call (category, priority, a reply, the articles it relies on). A ticket goes to a human
(``escalated``) when the knowledge base has nothing relevant, or when the model keeps giving
invalid output: a wrong automatic answer costs more than a slower human one.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel import ChunkSpec, Filters, SearchResult, llm, steps

KB_TAG = "kb"
# Help articles are short; small chunks keep one topic per chunk, so search hits stay on point.
ARTICLE_CHUNKS = ChunkSpec(max_tokens=150, overlap_tokens=20)
TOP_K = 4

Category = Literal["billing", "account", "technical", "shipping", "other"]


# --- IndexArticles ---------------------------------------------------------------------------


@dataclass
class Article:
    id: str  # stable: re-indexing an article with the same id replaces it
    title: str
    body: str  # markdown


@dataclass
class IndexArticlesInput:
    tenant: str
    articles: list[Article]


@dataclass
class IndexArticlesResult:
    articles: int
    chunks: int
    pii_counts: dict[str, int] = field(default_factory=dict)  # what scrubbing removed, over all articles


@workflow.defn
class IndexArticles:
    @workflow.run
    async def run(self, inp: IndexArticlesInput) -> IndexArticlesResult:
        indexed = await asyncio.gather(*(self._index(inp.tenant, a) for a in inp.articles))
        pii: dict[str, int] = {}
        for counts in (counts for _, counts in indexed):
            for entity, n in counts.items():
                pii[entity] = pii.get(entity, 0) + n
        return IndexArticlesResult(articles=len(indexed), chunks=sum(n for n, _ in indexed), pii_counts=pii)

    async def _index(self, tenant: str, article: Article) -> tuple[int, dict[str, int]]:
        # Articles are small, so their bytes may travel in workflow history; a large document
        # would go through the blob store instead (steps.list_documents).
        markdown = f"# {article.title}\n\n{article.body}".encode()
        elements = await steps.partition(markdown, filename=f"{article.id}.md")
        # Agents paste customer emails into articles too: scrub before anything is indexed.
        scrubbed = await steps.scrub_pii(elements)
        chunks = await steps.chunk(scrubbed, spec=ARTICLE_CHUNKS)
        vectors = await steps.embed(chunks)
        await steps.index_document(tenant, article.id, chunks, vectors, source=article.title, tags=[KB_TAG])
        return chunks.count, scrubbed.pii_counts


# --- TriageTicket ----------------------------------------------------------------------------


class Triage(BaseModel):
    """What the model must reply with (its JSON schema is sent to the provider)."""

    category: Category
    priority: Annotated[int, Field(ge=1, le=4, description="1 = urgent (service down, money lost) ... 4 = low")]
    answer: str = Field(min_length=1, description="the reply to the customer")
    cited_articles: list[str] = Field(description="ids of the knowledge-base articles the reply relies on")


@dataclass
class Ticket:
    tenant: str
    subject: str
    body: str


@dataclass
class TriageResult:
    escalated: bool
    reason: str | None = None  # why it was escalated
    category: Category | None = None  # None when escalated
    priority: int | None = None
    answer: str = ""
    cited_articles: list[str] = field(default_factory=list)  # article ids, each one retrieved
    cited_sources: list[str] = field(default_factory=list)  # their titles, same order
    attempts: int = 0  # provider attempts of the run (repairs and Temporal retries included)
    cost_usd: float = 0.0
    pii_counts: dict[str, int] = field(default_factory=dict)  # removed from the ticket before search and LLM


SYSTEM = (
    "You triage customer support tickets. Use only the knowledge-base articles given. "
    "Reply with the ticket's category, its priority (1 = urgent ... 4 = low), a short answer "
    "to the customer, and the ids of the articles your answer relies on."
)


def prompt(ticket_text: str, found: SearchResult) -> str:
    # Hits are labelled by article id (not S1, S2...): the ids are what the model cites and
    # what the result reports.
    articles = "\n\n".join(f"[{h.document_id}] {h.source}\n{h.text}" for h in found.hits)
    return f"Knowledge base:\n\n{articles}\n\nTicket:\n{ticket_text}"


def citation_schema(retrieved: list[str]) -> dict:
    """Triage's schema with the citable ids enumerated: providers with structured output then
    cannot cite anything else; ``citation_errors`` still checks the others."""
    schema = copy.deepcopy(Triage.model_json_schema())
    schema["properties"]["cited_articles"]["items"] = {"type": "string", "enum": retrieved}
    return schema


def citation_errors(triage: Triage, retrieved: list[str]) -> list[str]:
    unknown = [a for a in triage.cited_articles if a not in retrieved]
    if unknown:
        return [f"cited_articles: {', '.join(unknown)} not among the articles given ({', '.join(retrieved)})"]
    if not triage.cited_articles:
        return [f"cited_articles: cite at least one of {', '.join(retrieved)}"]
    return []


@workflow.defn
class TriageTicket:
    @workflow.run
    async def run(self, ticket: Ticket) -> TriageResult:
        # One scrub for subject and body: names and emails never reach the index query or the LLM.
        clean = await steps.scrub_pii(f"{ticket.subject}\n\n{ticket.body}")
        found = await steps.hybrid_search(ticket.tenant, clean.text, top_k=TOP_K, filters=Filters(tags=[KB_TAG]))
        if not found.relevant:
            return TriageResult(
                escalated=True,
                reason=f"no relevant knowledge-base article (best match {found.best_score:.2f})",
                pii_counts=clean.pii_counts,
            )

        retrieved = list(dict.fromkeys(h.document_id for h in found.hits))
        out = await llm.complete(
            prompt(clean.text, found),
            Triage,
            tenant=ticket.tenant,
            system=SYSTEM,
            schema=citation_schema(retrieved),
            validate=lambda t: citation_errors(t, retrieved),
            max_repairs=1,
        )
        # Run totals, not this call's: they stay right if more LLM calls are added later.
        _, cost_usd, attempts = llm.run_usage()
        result = TriageResult(escalated=False, attempts=len(attempts), cost_usd=cost_usd, pii_counts=clean.pii_counts)
        if not out.ok:
            result.escalated, result.reason = True, f"no valid triage from the LLM: {out.reason}"
            return result

        triage = out.value
        titles = {h.document_id: h.source for h in found.hits}
        result.category, result.priority, result.answer = triage.category, triage.priority, triage.answer
        result.cited_articles = list(dict.fromkeys(triage.cited_articles))
        result.cited_sources = [titles[a] for a in result.cited_articles]
        return result
