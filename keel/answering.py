"""Prompting, the answer schema, validation and the extractive fallback.

Sources are shown to the model as ``[S1]``, ``[S2]``…, and the JSON schema restricts citations
to exactly those labels, so a grammar-constrained server cannot cite a chunk retrieval did not
return; validation checks it anyway, because hosted models do not all enforce schemas.

Pure functions with no I/O: safe to call from workflow code.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.contracts import Citation, RetrievedChunk, ValidateOutput

NOT_ANSWERABLE = "Not answerable from the sources: no indexed passage is relevant enough to this question."

PROMPTS = {
    "answer-v1": (
        "You answer questions using only the numbered sources. "
        "Reply with JSON: {\"answer\": \"...\", \"citations\": [\"S1\"]}. "
        "The answer is one or two short sentences copied or paraphrased from the sources. "
        "Cite the sources you used."
    ),
}


class AnswerPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # At least one word: "..." or "-" is not an answer.
    answer: str = Field(min_length=1, pattern=r"\w")
    citations: list[str] = Field(min_length=1)


def source_label(i: int) -> str:
    return f"S{i + 1}"


def answer_schema(n_sources: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "citations": {
                "type": "array",
                "items": {"type": "string", "enum": [source_label(i) for i in range(n_sources)]},
                "minItems": 1,
            },
        },
        "required": ["answer", "citations"],
        "additionalProperties": False,
    }


def build_messages(
    question: str,
    chunks: list[RetrievedChunk],
    prompt_version: str,
    repair_errors: list[str] | None = None,
    previous_output: str | None = None,
) -> list[dict[str, str]]:
    try:
        system = PROMPTS[prompt_version]
    except KeyError:
        raise ValueError(f"unknown prompt_version {prompt_version!r}; known: {', '.join(PROMPTS)}") from None
    sources = "\n\n".join(f"[{source_label(i)}] ({PurePath(c.document).name})\n{c.text}" for i, c in enumerate(chunks))
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}"},
    ]
    if repair_errors:
        messages.append({"role": "assistant", "content": previous_output or ""})
        messages.append(
            {
                "role": "user",
                "content": "Your reply was invalid: " + "; ".join(repair_errors)
                + ". Reply again with valid JSON that cites only the given source labels.",
            }
        )
    return messages


def validate_answer(content: str, chunks: list[RetrievedChunk]) -> ValidateOutput:
    """Parse the model's reply and check every citation is a chunk that retrieval returned."""
    try:
        payload = AnswerPayload.model_validate_json(content)
    except ValidationError as e:
        errors = [f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors(include_url=False)]
        return ValidateOutput(valid=False, errors=errors)
    by_label = {source_label(i): c for i, c in enumerate(chunks)}
    by_id = {c.chunk_id: c for c in chunks}
    citations, errors = [], []
    for ref in dict.fromkeys(payload.citations):  # de-duplicate, keep order
        chunk = by_label.get(ref.strip("[] ")) or by_id.get(ref)
        if chunk is None:
            errors.append(f"citation {ref!r} is not one of the sources {', '.join(by_label)}")
        else:
            citations.append(Citation(chunk_id=chunk.chunk_id, document=chunk.document, score=chunk.score))
    if errors:
        return ValidateOutput(valid=False, errors=errors)
    return ValidateOutput(valid=True, answer=payload.answer, citations=citations)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def extractive_answer(chunks: list[RetrievedChunk], max_sentences: int = 2) -> tuple[str, list[Citation]]:
    """The degraded answer: the opening sentences of the best chunk, cited."""
    top = chunks[0]
    lines = top.text.split("\n", 1)
    body = lines[1] if len(lines) == 2 and lines[1].strip() else top.text  # drop the section title line
    sentences = _SENTENCE_END.split(body.strip())
    return " ".join(sentences[:max_sentences]), [Citation(top.chunk_id, top.document, top.score)]

