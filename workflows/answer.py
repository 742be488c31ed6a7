"""The question-answering state machine."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.answer import scrub_text
    from activities.cache import lookup_cached_answer, store_cached_answer
    from activities.index import retrieve
    from activities.llm import ATTEMPT_SIGNAL, plan_llm_call
    from keel import answering, llm_policy
    from keel.contracts import (
        AskInput,
        AskResult,
        CacheLookupInput,
        CacheStoreInput,
        Citation,
        LLMPlan,
        PlanInput,
        ProviderAttempt,
        RetrievedChunk,
        RetrieveInput,
        ScrubTextInput,
        Usage,
    )
    from keel.errors import NON_RETRYABLE, BudgetExceeded
    from keel.search_attributes import KEEL_CACHE, KEEL_COST_USD, KEEL_MODEL, KEEL_TENANT, KEEL_TOKENS
    from workflows.llm_chain import ProviderChain

HEARTBEAT = timedelta(seconds=30)
LOCAL_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE)
# The cache is an optimisation: two quick tries, then the run goes on without it.
CACHE_RETRY = RetryPolicy(maximum_attempts=2)


@workflow.defn
class AnswerQuestion:
    """scrub query → hybrid retrieve → plan → cache? → provider chain → result.

    The provider chain (``workflows/llm_chain.py``): generate → validate (→ one repair re-ask)
    per provider, falling over to the next on failure. Never invents: with no relevant chunk it
    answers "not answerable"; when no provider produces a valid cited answer it returns the best
    chunk's opening sentences, ``degraded``. Every LLM attempt, retries included, is reported
    to the run (signal ``llm_attempt``) and counted in its usage and cost.
    """

    def __init__(self) -> None:
        self._chain = ProviderChain()
        self._cache_looked_up = False

    @workflow.signal(name=ATTEMPT_SIGNAL)
    def record_attempt(self, attempt: ProviderAttempt) -> None:
        self._chain.record(attempt)

    @workflow.query
    def attempts(self) -> list[ProviderAttempt]:
        """The attempts so far, with their tokens and cost (for a run still in progress)."""
        return self._chain.attempts

    @workflow.run
    async def run(self, inp: AskInput) -> AskResult:
        workflow.upsert_search_attributes([KEEL_TENANT.value_set(inp.tenant)])
        scrubbed = await workflow.execute_activity(
            scrub_text,
            ScrubTextInput(text=inp.question),
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=LOCAL_RETRY,
        )
        retrieved = await workflow.execute_activity(
            retrieve,
            RetrieveInput(
                tenant=inp.tenant, query=scrubbed.text, top_k=inp.top_k, prefetch_k=inp.prefetch_k, filters=inp.filters
            ),
            task_queue=inp.index_task_queue,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=LOCAL_RETRY,
        )
        chunks = retrieved.chunks
        settings = {
            "prompt_version": inp.prompt_version,
            "embedding_model": retrieved.embedding_model,
            "top_k": inp.top_k,
            "prefetch_k": inp.prefetch_k,
            "min_relevance": inp.min_relevance,
            "fusion": "rrf",
            "filters": dataclasses.asdict(inp.filters) if inp.filters else None,
        }
        result = AskResult(
            answer=answering.NOT_ANSWERABLE,
            citations=[],
            degraded=False,
            answerable=False,
            usage=Usage(),
            model="",
            attempts=0,
            settings=settings,
            pii_counts=scrubbed.pii_counts,
        )
        if not chunks or max(c.score for c in chunks) < inp.min_relevance:
            return self._finish(result)
        result.answerable = True

        plan = await workflow.execute_activity(
            plan_llm_call,
            PlanInput(tenant=inp.tenant, entity_task_queue=workflow.info().task_queue),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=LOCAL_RETRY,
        )
        settings["providers"] = [p.name for p in plan.providers]
        use_cache = plan.cache_enabled and inp.use_cache
        if use_cache and await self._answer_from_cache(inp, scrubbed.text, chunks, plan, result):
            return self._finish(result)

        choice = llm_policy.choose_chain(plan, workflow.now())
        self._chain.skipped = choice.skipped
        self._chain.decisions = choice.decisions
        if choice.refused:
            self._finish(result)
            raise ApplicationError(choice.refused, type=BudgetExceeded.__name__, non_retryable=True)

        answered = await self._chain.answer(inp, scrubbed.text, chunks, choice.providers)
        result.attempts = self._chain.calls
        result.model = answered.model
        if answered.validation.valid:
            result.answer, result.citations = answered.validation.answer, answered.validation.citations
            result.provider = answered.provider
            if plan.cache_enabled:
                await self._store_in_cache(inp, scrubbed.text, chunks, plan, result)
        else:
            result.answer, result.citations = answering.extractive_answer(chunks)
            result.degraded = True
            result.degraded_reason = answered.reason or "no LLM provider available: every circuit is open"
        return self._finish(result)

    async def _answer_from_cache(
        self, inp: AskInput, question: str, chunks: list[RetrievedChunk], plan: LLMPlan, result: AskResult
    ) -> bool:
        self._cache_looked_up = True
        try:
            hit = await workflow.execute_activity(
                lookup_cached_answer,
                CacheLookupInput(
                    tenant=inp.tenant,
                    question=question,
                    prompt_version=inp.prompt_version,
                    models=list(dict.fromkeys(p.model for p in plan.providers)),
                    chunk_ids=[c.chunk_id for c in chunks],
                    semantic=plan.semantic_cache,
                ),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=CACHE_RETRY,
            )
        except ActivityError:
            return False
        by_id = {c.chunk_id: c for c in chunks}
        citations = [Citation(i, by_id[i].document, by_id[i].score) for i in hit.cited_chunk_ids if i in by_id]
        if hit.hit is None or not citations:
            return False
        result.answer, result.citations, result.cache = hit.answer, citations, hit.hit.value
        result.model, result.provider = hit.model, hit.provider
        result.settings["cache_source_workflow_id"] = hit.source_workflow_id
        if hit.similarity is not None:
            result.settings["cache_similarity"] = hit.similarity
        return True

    async def _store_in_cache(
        self, inp: AskInput, question: str, chunks: list[RetrievedChunk], plan: LLMPlan, result: AskResult
    ) -> None:
        try:
            await workflow.execute_activity(
                store_cached_answer,
                CacheStoreInput(
                    tenant=inp.tenant,
                    question=question,
                    prompt_version=inp.prompt_version,
                    model=result.model,
                    provider=result.provider,
                    chunk_ids=[c.chunk_id for c in chunks],
                    answer=result.answer,
                    cited_chunk_ids=[c.chunk_id for c in result.citations],
                    workflow_id=workflow.info().workflow_id,
                    semantic=plan.semantic_cache,
                ),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=CACHE_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("could not store the answer in the cache")

    def _finish(self, result: AskResult) -> AskResult:
        """Totals over every attempt, and the search attributes operators filter runs by."""
        result.provider_attempts = self._chain.attempts
        result.decisions = self._chain.decisions
        result.usage = self._chain.usage
        result.cost_usd = self._chain.cost_usd
        result.settings["llm_model"] = result.model
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
