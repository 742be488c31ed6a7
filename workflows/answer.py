"""The question-answering state machine."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.answer import generate_answer, scrub_text, validate_answer
    from activities.index import retrieve
    from keel import answering
    from keel.contracts import (
        AskInput,
        AskResult,
        GenerateInput,
        GenerateOutput,
        RetrieveInput,
        ScrubTextInput,
        Usage,
        ValidateInput,
        ValidateOutput,
    )
    from keel.errors import NON_RETRYABLE

# 429s wait for the server's Retry-After (passed as next_retry_delay); 5xx and timeouts back
# off; 4xx request errors are in NON_RETRYABLE and fail at once.
LLM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=NON_RETRYABLE,
)
HEARTBEAT = timedelta(seconds=30)
LOCAL_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE)


@workflow.defn
class AnswerQuestion:
    """scrub query → hybrid retrieve → generate → validate (→ one repair re-ask) → result.

    Never invents: with no relevant chunk it answers "not answerable"; when the model cannot
    produce a valid cited answer it returns the best chunk's opening sentences, ``degraded``.
    """

    @workflow.run
    async def run(self, inp: AskInput) -> AskResult:
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
            return result
        result.answerable = True

        request = GenerateInput(question=scrubbed.text, chunks=chunks, prompt_version=inp.prompt_version)
        validation = ValidateOutput(valid=False)
        for attempt in range(2):  # the first answer, then one repair re-ask with the errors
            try:
                generated = await self._generate(request, result)
            except ActivityError as e:
                result.degraded_reason = f"LLM failed: {e.cause.message if e.cause else e}"
                break
            validation = await workflow.execute_activity(
                validate_answer,
                ValidateInput(content=generated.content, chunks=chunks),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=LOCAL_RETRY,
            )
            if validation.valid:
                break
            result.degraded_reason = "invalid answer after repair: " + "; ".join(validation.errors)
            request = GenerateInput(
                question=scrubbed.text,
                chunks=chunks,
                prompt_version=inp.prompt_version,
                repair_errors=validation.errors,
                previous_output=generated.content,
            )

        if validation.valid:
            result.answer, result.citations, result.degraded_reason = validation.answer, validation.citations, None
        else:
            result.answer, result.citations = answering.extractive_answer(chunks)
            result.degraded = True
        settings["llm_model"] = result.model
        return result

    async def _generate(self, request: GenerateInput, result: AskResult) -> GenerateOutput:
        result.attempts += 1
        generated = await workflow.execute_activity(
            generate_answer,
            request,
            start_to_close_timeout=timedelta(minutes=3),
            retry_policy=LLM_RETRY,
        )
        result.model = generated.model
        result.usage.prompt_tokens += generated.usage.prompt_tokens
        result.usage.completion_tokens += generated.usage.completion_tokens
        return generated
