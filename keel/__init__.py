"""Keel: durable RAG and LLM steps for your own Temporal workflows.

Write a plain ``@workflow.defn`` that calls Keel's steps; add :class:`KeelPlugin` to your
client; run your own worker (or ``keel up --app yourpkg.workflows``)::

    from temporalio import workflow
    from pydantic import BaseModel
    from keel import steps, llm

    class Reply(BaseModel):
        answer: str

    @workflow.defn
    class AskKB:
        @workflow.run
        async def run(self, question: str) -> str:
            clean = await steps.scrub_pii(question)
            hits = await steps.hybrid_search("acme", clean.text, top_k=5)
            out = await llm.complete(hits.sources_text() + "\\n\\n" + clean.text, Reply, tenant="acme")
            return out.value.answer if out.ok else out.reason

Everything here is public and documented; other modules are Keel's own machinery.

* steps: :mod:`keel.steps` (partition, scrub_pii, chunk, read_chunks, embed, index_document,
  delete_document, hybrid_search, indexed_versions, index_stats, list_documents, manifest_page)
* LLM calls: :mod:`keel.llm` (``complete``, ``Message``, ``LLMResult``, ``RunBudget``, ``LLMCache``)
* run settings: :class:`ChunkSpec`, :class:`PIIPolicy`, :class:`EmbeddingSpec`,
  :class:`RetrievalSettings`, :class:`Filters`; step options: :class:`StepOptions`
* deployment: :class:`KeelSettings`, :class:`KeelPlugin`; tests: :mod:`keel.testing`
* agents: :func:`run_agent` with :func:`tool` s (:class:`AgentLimits`, :class:`AgentResult`,
  :class:`AgentStop`; MCP servers' tools: :mod:`keel.agents.mcp`)
* people and time: :func:`approval` (:class:`ApprovalRequest`, :class:`Escalation`,
  :class:`ApprovalDecision`; deciding from code: :mod:`keel.approvals`), :func:`wait_for_event`
  (:class:`EventResult`), :func:`sleep`
* errors: :class:`KeelError` and its subclasses (:mod:`keel.errors`)
"""

from keel.offline import configure_offline

# Keep every process that imports Keel off the network (model hubs, telemetry); setdefault, so
# an explicit environment wins.
configure_offline()

from keel import approvals, llm, steps  # noqa: E402
from keel.agents import AgentLimits, AgentResult, AgentStop, run_agent, tool  # noqa: E402
from keel.approvals import ApprovalDecision, ApprovalRequest, DecisionRejected, Escalation, approval  # noqa: E402
from keel.config import KeelSettings  # noqa: E402
from keel.errors import (  # noqa: E402
    BadDocument,
    BudgetExceeded,
    InvalidFilter,
    InvalidRequest,
    KeelError,
    LLMError,
    MissingTenant,
    PathNotAllowed,
    PermissionDenied,
)
from keel.llm import LLMCache, LLMResult, Message, ProviderConfig, RunBudget, complete  # noqa: E402
from keel.options import StepOptions  # noqa: E402
from keel.plugin import KeelPlugin  # noqa: E402
from keel.types import (  # noqa: E402
    ChunkSpec,
    Chunks,
    ChunkText,
    Elements,
    EmbeddingSpec,
    Filters,
    Fusion,
    IndexResult,
    PIIOperator,
    PIIPolicy,
    RetrievalSettings,
    ScrubbedText,
    SearchHit,
    SearchResult,
    Vectors,
)
from keel.uploads import upload_document  # noqa: E402
from keel.waits import EventResult, sleep, wait_for_event  # noqa: E402

__all__ = [
    "AgentLimits",
    "AgentResult",
    "AgentStop",
    "ApprovalDecision",
    "ApprovalRequest",
    "BadDocument",
    "BudgetExceeded",
    "ChunkSpec",
    "ChunkText",
    "Chunks",
    "DecisionRejected",
    "Elements",
    "EmbeddingSpec",
    "Escalation",
    "EventResult",
    "Filters",
    "Fusion",
    "IndexResult",
    "InvalidFilter",
    "InvalidRequest",
    "KeelError",
    "KeelPlugin",
    "KeelSettings",
    "LLMCache",
    "LLMError",
    "LLMResult",
    "Message",
    "MissingTenant",
    "PIIOperator",
    "PIIPolicy",
    "PathNotAllowed",
    "PermissionDenied",
    "ProviderConfig",
    "RetrievalSettings",
    "RunBudget",
    "ScrubbedText",
    "SearchHit",
    "SearchResult",
    "StepOptions",
    "Vectors",
    "approval",
    "approvals",
    "complete",
    "llm",
    "run_agent",
    "sleep",
    "steps",
    "tool",
    "upload_document",
    "wait_for_event",
]
