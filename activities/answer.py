"""Question-answering activities: scrub the query, validate the reply (the LLM call itself is in
``activities/llm.py``)."""

from __future__ import annotations

from temporalio import activity

from activities._runtime import heartbeating, runtime
from keel import answering
from keel.contracts import ScrubTextInput, ScrubTextOutput, ValidateInput, ValidateOutput


@activity.defn
@heartbeating
def scrub_text(inp: ScrubTextInput) -> ScrubTextOutput:
    rt = runtime()
    if not rt.settings.pii_enabled:
        return ScrubTextOutput(text=inp.text, pii_counts={})
    text, counts = rt.scrubber.scrub(inp.text)
    return ScrubTextOutput(text=text, pii_counts=counts)


@activity.defn
def validate_answer(inp: ValidateInput) -> ValidateOutput:
    return answering.validate_answer(inp.content, inp.chunks)


ANSWER_ACTIVITIES = [scrub_text, validate_answer]
