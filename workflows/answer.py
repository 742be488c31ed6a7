"""The question-answering state machine, written only with Keel's public API."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow
from temporalio.contrib.workflow_streams import WorkflowStream

with workflow.unsafe.imports_passed_through():
    from keel import llm, steps
    from keel.llm import injection, prompts
    from keel.llm.types import LLMCache, PolicyDecision, ProviderAttempt, RunBudget, Usage
    from keel.search_attributes import KEEL_CACHE, KEEL_COST_USD, KEEL_INJECTION, KEEL_MODEL, KEEL_TENANT, KEEL_TOKENS
    from keel.types import Filters, PIIPolicy, RetrievalSettings


@dataclass
class AskInput:
    tenant: str
    question: str
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    prompt_version: str = prompts.DEFAULT_PROMPT
    filters: Filters | None = None
    pii: PIIPolicy | None = None  # None: the worker's default policy
    use_cache: bool = True  # False: skip the cache lookup (a fresh answer still refreshes it)
    max_cost_usd: float | None = None  # per-run budget: no further LLM call once spent
    stream: bool = False  # publish the answer's tokens to this run's workflow stream (topic keel.llm)
    # Who asks (``alice`` or ``user:alice``) and its groups: the answer comes only from documents
    # without readers or readable by one of them. Neither: documents without readers only.
    principal: str | None = None
    groups: list[str] = field(default_factory=list)
    # A second opinion: the provider chain is asked whether the cited sources support an answer
    # that passed the lexical check; "no" counts as invalid (repair, then the floor).
    judge: bool = False


@dataclass
class Citation:
    chunk_id: str
    document: str  # the source path
    score: float


@dataclass
class AnswerSettings:
    """What an answer was produced with: prompt, models and retrieval, recorded per run."""

    prompt_version: str
    embedding_model: str
    retrieval: RetrievalSettings
    filters: Filters | None = None
    providers: list[str] = field(default_factory=list)
    llm_model: str = ""
    cache_source_workflow_id: str | None = None
    cache_similarity: float | None = None


@dataclass
class AskResult:
    answer: str
    citations: list[Citation]
    degraded: bool
    answerable: bool
    settings: AnswerSettings
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    attempts: int = 0  # LLM requests made (each may have had several Temporal attempts)
    pii_counts: dict[str, int] = field(default_factory=dict)
    degraded_reason: str | None = None
    provider: str = ""  # the provider whose answer this is ("" when no LLM answered)
    provider_attempts: list[ProviderAttempt] = field(default_factory=list)  # every attempt, retries included
    cost_usd: float = 0.0  # of every attempt, failed ones included
    cache: str | None = None  # CacheHit value when the answer came from the cache
    decisions: list[PolicyDecision] = field(default_factory=list)  # budget and breaker decisions
    injection: list[str] = field(default_factory=list)  # rules that found instructions (keel/llm/injection.py)


@workflow.defn(sandboxed=False)
class AnswerQuestion:
    """scrub the question → hybrid search → the LLM chain (cache, fall-over, repair) → result.

    Never invents: with no relevant chunk it answers "not answerable" without calling an LLM;
    when no provider produces a valid cited answer grounded in what it cites, it returns the
    retrieved sentences that best match the question, ``degraded``, with the reason.
    """

    @workflow.run
    async def run(self, inp: AskInput) -> AskResult:
        workflow.upsert_search_attributes([KEEL_TENANT.value_set(inp.tenant)])
        question = await steps.scrub_pii(inp.question, policy=inp.pii)
        # The asker's permissions filter inside the index; the answer cache then only serves an
        # answer whose cited chunks were all retrieved again here, i.e. that this asker may read.
        found = await steps.hybrid_search(
            inp.tenant, question.text, settings=inp.retrieval, filters=inp.filters, principal=inp.principal,
            groups=inp.groups,
        )
        settings = AnswerSettings(inp.prompt_version, found.embedding_model, found.settings, inp.filters)
        result = AskResult(prompts.NOT_ANSWERABLE, [], degraded=False, answerable=False, settings=settings)
        result.pii_counts = question.pii_counts
        if not found.relevant:
            return self._finish(result)
        result.answerable = True

        ids = [h.chunk_id for h in found.hits]
        # 0.4: answers are checked for substance (grounding) and the fallback picks the sentences
        # that answer; runs recorded before keep their checks on replay.
        grounded = workflow.patched("keel-grounded-answers")
        findings = []
        if workflow.patched("keel-injection-defence"):
            # Instructions hidden in the chunks never reach the model; found ones arm the check.
            found, findings = injection.guard(question.text, found)
            if findings:
                result.injection = sorted({f.rule for f in findings})
                workflow.upsert_search_attributes([KEEL_INJECTION.value_set("flagged")])
        system_prompt = prompts.PROMPTS.get(inp.prompt_version, "")
        ranked = None
        if workflow.patched("keel-passage-ranking"):
            # 0.6: the chunks' passages ranked for this question (words, meaning, kind of fact):
            # a model's figure must come from the best of them, and the floor answers with them.
            ranked = await steps.rank_passages(question.text, found)

        def check(reply: prompts.AnswerPayload) -> list[str]:
            errors = prompts.citation_errors(reply, found)
            if grounded and not errors:
                errors = prompts.grounding_errors(reply, found, question.text)
            if ranked is not None and not errors:
                errors = prompts.agreement_errors(reply, found, ranked, question.text)
            return errors + injection.output_errors(reply.answer, system_prompt, findings)

        async def judge(reply: prompts.AnswerPayload) -> list[str]:
            verdict = await llm.complete(
                prompts.judge_messages(question.text, reply, found), prompts.JudgeVerdict, tenant=inp.tenant, max_repairs=0,
                budget=RunBudget(inp.max_cost_usd) if inp.max_cost_usd is not None else None,
            )
            if verdict.ok and not verdict.value.supported:  # a judge that cannot answer does not veto
                return [f"a reviewer found the answer unsupported by its sources ({verdict.value.reason[:200]}): answer from the sources only"]
            return []

        out = await llm.complete(
            prompts.answer_messages(inp.prompt_version, question.text, found, ranked),
            prompts.AnswerPayload,
            tenant=inp.tenant,
            schema=prompts.answer_schema(len(found.hits)),  # every label: one cache scope per question's sources
            validate=check,
            judge=judge if inp.judge else None,
            cites=lambda reply: [h.chunk_id for h in found.cited(reply.citations)],
            cache=LLMCache(key=question.text, context_ids=ids, version=inp.prompt_version, read=inp.use_cache),
            budget=RunBudget(inp.max_cost_usd) if inp.max_cost_usd is not None else None,
            stream=self._stream if inp.stream else None,
        )
        settings.providers = out.providers
        self._cache_looked_up = out.cache_looked_up
        result.model, result.attempts, result.decisions = out.model, out.requests, out.decisions
        if out.ok:
            result.answer = out.value.answer
            result.citations = [Citation(h.chunk_id, h.source, h.score) for h in found.cited(out.value.citations)]
            result.provider = out.provider
            result.cache = out.cache.value if out.cache else None
            settings.cache_source_workflow_id, settings.cache_similarity = out.cache_source_workflow_id, out.cache_similarity
        else:
            if grounded:
                result.answer, top = prompts.best_sentences(question.text, found.hits, ranked=ranked)
            else:
                top = found.hits[0]
                result.answer = prompts.extractive_answer(top.text)
            result.citations = [Citation(top.chunk_id, top.source, top.score)]
            result.degraded, result.degraded_reason = True, out.reason
        return self._finish(result)

    def __init__(self) -> None:
        self._cache_looked_up = False
        # Subscribers (``keel ask --stream``) read the answer's tokens here while it is written.
        self._stream = WorkflowStream()

    def _finish(self, result: AskResult) -> AskResult:
        """Totals over every attempt of the run, and the search attributes operators filter by."""
        result.usage, result.cost_usd, attempts = llm.run_usage()
        result.provider_attempts = attempts
        result.settings.llm_model = result.model
        updates = [
            KEEL_COST_USD.value_set(float(result.cost_usd)),
            KEEL_TOKENS.value_set(int(result.usage.prompt_tokens + result.usage.completion_tokens)),
        ]
        if result.model:
            updates.append(KEEL_MODEL.value_set(result.model))
        if self._cache_looked_up:
            updates.append(KEEL_CACHE.value_set(result.cache or "miss"))
        workflow.upsert_search_attributes(updates)
        return result
