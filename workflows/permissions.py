"""Change who may read indexed documents, in place (``keel permissions``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel import steps
    from keel.types import reader_names


@dataclass
class SetReadersInput:
    tenant: str
    document_ids: list[str]  # keel.activities.ingest.document_id(tenant, path) of each file
    readers: list[str] = field(default_factory=list)  # user:NAME / group:NAME; empty: everyone in the tenant


@dataclass
class SetReadersResult:
    chunks: list[int]  # per document, the chunks updated (0: the document is not indexed)
    readers: list[str] = field(default_factory=list)


@workflow.defn(sandboxed=False)
class SetReaders:
    """Replace the readers of indexed documents: nothing is re-embedded, the next ask sees it."""

    @workflow.run
    async def run(self, inp: SetReadersInput) -> SetReadersResult:
        readers = reader_names(inp.readers)  # an invalid principal fails the run, typed
        chunks = [await steps.set_readers(inp.tenant, doc, readers) for doc in inp.document_ids]
        return SetReadersResult(chunks, readers)
