"""Question-answering activities: scrub the query, generate with the LLM, validate the reply."""

from __future__ import annotations

from temporalio import activity

from activities._runtime import heartbeating, runtime
from keel import answering
from keel.contracts import (
    GenerateInput,
    GenerateOutput,
    ScrubTextInput,
    ScrubTextOutput,
    Usage,
    ValidateInput,
    ValidateOutput,
)
from keel.errors import KeelError, to_application_error
from keel.llm import ChatClient, ResponseFormat


@activity.defn
@heartbeating
def scrub_text(inp: ScrubTextInput) -> ScrubTextOutput:
    rt = runtime()
    if not rt.settings.pii_enabled:
        return ScrubTextOutput(text=inp.text, pii_counts={})
    text, counts = rt.scrubber.scrub(inp.text)
    return ScrubTextOutput(text=text, pii_counts=counts)


@activity.defn
async def generate_answer(inp: GenerateInput) -> GenerateOutput:
    s = runtime().settings
    client = ChatClient(
        s.llm_base_url,
        s.llm_model,
        api_key=s.llm_api_key,
        timeout=s.llm_timeout_seconds,
        response_format=ResponseFormat(s.response_format),
    )
    messages = answering.build_messages(
        inp.question, inp.chunks, inp.prompt_version, inp.repair_errors, inp.previous_output
    )
    try:
        completion = await client.complete(
            messages, json_schema=answering.answer_schema(len(inp.chunks)), max_tokens=s.llm_max_tokens
        )
    except KeelError as e:
        raise to_application_error(e) from None
    return GenerateOutput(
        content=completion.content,
        model=completion.model,
        usage=Usage(completion.prompt_tokens, completion.completion_tokens),
    )


@activity.defn
def validate_answer(inp: ValidateInput) -> ValidateOutput:
    return answering.validate_answer(inp.content, inp.chunks)


ANSWER_ACTIVITIES = [scrub_text, generate_answer, validate_answer]
