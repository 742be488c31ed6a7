"""Chunk partitioned elements along the document's structure.

A ``Title`` element starts a section; chunks never span two sections. Inside a section,
whole elements are packed up to ``max_tokens``; an element longer than that is split by
words. Consecutive chunks of one section share ``overlap_tokens`` words so a sentence cut at
a boundary is still found. Each chunk carries its section title, which also helps retrieval.

>>> chunk_elements([{"type": "Title", "text": "Hours"},
...                 {"type": "NarrativeText", "text": "Open daily from 9 to 5."}], max_tokens=50)
[{'section': 'Hours', 'text': 'Hours\\nOpen daily from 9 to 5.'}]

A chunk of a later section also carries the document's title as ``context``: "Cost and
funding / The project cost $236,000." says nowhere what project. The context is embedded and
keyword-indexed with the chunk (:func:`searchable_text`); the chunk's text, what prompts and
citations show, stays as written.

>>> later = chunk_elements([{"type": "Title", "text": "Solar conversion"},
...                         {"type": "NarrativeText", "text": "Saltmarrow went solar."},
...                         {"type": "Title", "text": "Cost"},
...                         {"type": "NarrativeText", "text": "It cost $236,000."}], max_tokens=50)[1]
>>> later
{'section': 'Cost', 'text': 'Cost\\nIt cost $236,000.', 'context': 'Solar conversion'}
>>> searchable_text(later)
'Solar conversion\\nCost\\nIt cost $236,000.'
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Word-piece-ish token estimate (words and punctuation); close to MiniLM's count for English."""
    return len(_TOKEN.findall(text))


def chunk_elements(
    elements: list[dict[str, str]], *, max_tokens: int = 180, overlap_tokens: int = 30
) -> list[dict[str, str]]:
    if overlap_tokens >= max_tokens:
        raise ValueError("overlap_tokens must be smaller than max_tokens")
    chunks: list[dict[str, str]] = []
    sections = _sections(elements)
    document_title = next((title for title, _ in sections if title), "")
    for title, texts in sections:
        for body in _pack(texts, max_tokens, overlap_tokens):
            # A heading with no body of its own is chunked once, not as "Title\nTitle".
            text = f"{title}\n{body}" if title and body != title else body
            chunk = {"section": title, "text": text}
            if document_title and title != document_title:
                chunk["context"] = document_title
            chunks.append(chunk)
    return chunks


def searchable_text(chunk: dict[str, str]) -> str:
    """What is embedded and keyword-indexed for a chunk: its document's title, if the chunk
    carries one as ``context``, then its text."""
    context = chunk.get("context")
    return f"{context}\n{chunk['text']}" if context else chunk["text"]


def _sections(elements: list[dict[str, str]]) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = [("", [])]
    for el in elements:
        if el["type"] == "Title":
            sections.append((el["text"], []))
        else:
            sections[-1][1].append(el["text"])
    # A title with no body (e.g. consecutive headings) is still content worth finding.
    return [(t, texts or [t]) for t, texts in sections if texts or t]


Word = tuple[str, int]  # (word, its token count)


def _pack(texts: list[str], max_tokens: int, overlap: int) -> list[str]:
    units: list[tuple[list[Word], bool]] = []  # (words, continues the previous window of one element)
    for text in texts:
        words = [(w, count_tokens(w)) for w in text.split()]
        windows = _windows(words, max_tokens, overlap) if _size(words) > max_tokens else [words]
        units.extend((window, i > 0) for i, window in enumerate(windows))

    chunks: list[list[Word]] = []
    current: list[Word] = []
    for unit, continues in units:
        if current and _size(current) + _size(unit) > max_tokens:
            chunks.append(current)
            tail = [] if continues else _tail(current, overlap)  # a window already starts with its overlap
            current = tail + unit if _size(tail) + _size(unit) <= max_tokens else list(unit)
        else:
            current = current + unit
    if current:
        chunks.append(current)
    return [" ".join(w for w, _ in c) for c in chunks]


def _size(words: list[Word]) -> int:
    return sum(n for _, n in words)


def _windows(words: list[Word], max_tokens: int, overlap: int) -> list[list[Word]]:
    out, start = [], 0
    while True:
        end, size = start, 0
        while end < len(words) and size + words[end][1] <= max_tokens:
            size += words[end][1]
            end += 1
        end = max(end, start + 1)  # a single giant "word" still moves forward
        out.append(words[start:end])
        if end >= len(words):
            return out
        start = max(start + 1, end - len(_tail(words[start:end], overlap)))


def _tail(words: list[Word], overlap: int) -> list[Word]:
    size, i = 0, len(words)
    while i > 0 and size + words[i - 1][1] <= overlap:
        i -= 1
        size += words[i][1]
    return words[i:]
