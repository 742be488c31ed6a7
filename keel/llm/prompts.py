"""Keel's RAG answer prompt: messages, the answer schema, citation checks, the extractive
fallback. ``AnswerQuestion`` passes these to :func:`keel.llm.complete` like any user would.

Sources are shown to the model as ``[S1]``, ``[S2]``…, and the JSON schema restricts citations
to exactly those labels, so a grammar-constrained server cannot cite a chunk retrieval did not
return; validation checks it anyway, because hosted models do not all enforce schemas.

Pure functions with no I/O: safe to call from workflow code.

>>> from keel.types import SearchHit, SearchResult
>>> found = SearchResult([SearchHit("c1", "d1", "/docs/faq.md", "Hours\\nOpen daily. Closed Mondays.", 0.7, 0.05)], "m")
>>> citation_errors(AnswerPayload(answer="Daily.", citations=["S2"]), found)
["citation 'S2' is not one of the sources S1"]
>>> extractive_answer(found.hits[0].text)
'Open daily. Closed Mondays.'
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from keel.errors import InvalidRequest
from keel.llm.types import Message
from keel.types import SearchResult, source_label

NOT_ANSWERABLE = "Not answerable from the sources: no indexed passage is relevant enough to this question."
DEFAULT_PROMPT = "answer-v1"

PROMPTS = {
    "answer-v1": (
        "You answer questions using only the numbered sources. "
        "Reply with JSON: {\"answer\": \"...\", \"citations\": [\"S1\"]}. "
        "The answer is one or two short sentences copied or paraphrased from the sources. "
        "Cite the sources you used."
    ),
}


class AnswerPayload(BaseModel):
    """The reply the answer prompt asks for."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # At least one word: "..." or "-" is not an answer.
    answer: str = Field(min_length=1, pattern=r"\w")
    citations: list[str] = Field(min_length=1)


def answer_schema(n_sources: int) -> dict:
    """The answer's JSON schema, with citations restricted to the labels shown."""
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


def answer_messages(prompt_version: str, question: str, found: SearchResult) -> list[Message]:
    try:
        system = PROMPTS[prompt_version]
    except KeyError:
        raise InvalidRequest(f"unknown prompt_version {prompt_version!r}; known: {', '.join(PROMPTS)}") from None
    return [
        Message("system", system),
        Message("user", f"Sources:\n{found.sources_text()}\n\nQuestion: {question}"),
    ]


def citation_errors(reply: AnswerPayload, found: SearchResult) -> list[str]:
    """Every citation must be a label (or chunk id) of a retrieved chunk."""
    labels = ", ".join(source_label(i) for i in range(len(found.hits)))
    return [
        f"citation {ref!r} is not one of the sources {labels}"
        for ref in dict.fromkeys(reply.citations)
        if not found.cited([ref])
    ]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def extractive_answer(text: str, max_sentences: int = 2) -> str:
    """The degraded answer: the opening sentences of a chunk (its section title line dropped)."""
    lines = text.split("\n", 1)
    body = lines[1] if len(lines) == 2 and lines[1].strip() else text
    return " ".join(_SENTENCE_END.split(body.strip())[:max_sentences])
