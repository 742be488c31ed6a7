"""The keyword side of hybrid search: BM25 as Qdrant sparse vectors.

Documents get BM25's term-frequency part, ``tf·(k1+1) / (tf + k1·(1-b+b·len/avg_len))``;
queries get weight 1 per distinct term. The collection's sparse vector uses Qdrant's IDF
modifier, so Qdrant multiplies in the IDF computed over the live collection: the keyword index
is persistent, shared by every reader, updated incrementally and filtered like the dense side.

>>> doc = bm25_document_vector("The lantern lights the lantern room")
>>> sorted(zip(doc.indices, doc.values))[0][1] > 0
True
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

K1 = 1.2
B = 0.75
AVG_LEN = 120.0  # tokens in a typical chunk; baked into document weights

STOP_WORDS = frozenset(
    """a an and are as at be but by for from has have how if in into is it its of on or
    that the their there these this to was were what when where which who why will with
    does did do can you your""".split()
)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SparseTerms:
    indices: list[int]
    values: list[float]


def tokenize(text: str) -> list[str]:
    return [t for t in _WORD.findall(text.lower()) if t not in STOP_WORDS]


def term_id(term: str) -> int:
    """A stable 32-bit id per term (Qdrant sparse indices are uint32)."""
    return zlib.crc32(term.encode())


def bm25_document_vector(text: str, *, avg_len: float = AVG_LEN) -> SparseTerms:
    tokens = tokenize(text)
    norm = K1 * (1 - B + B * len(tokens) / avg_len)
    counts = _by_id(Counter(tokens))
    return SparseTerms(
        indices=list(counts), values=[tf * (K1 + 1) / (tf + norm) for tf in counts.values()]
    )


def bm25_query_vector(text: str) -> SparseTerms:
    ids = _by_id(Counter(set(tokenize(text))))
    return SparseTerms(indices=list(ids), values=[1.0] * len(ids))


def _by_id(counts: Counter[str]) -> dict[int, int]:
    # Two terms can share a crc32; merge them rather than send a duplicate index.
    merged: dict[int, int] = {}
    for term, n in counts.items():
        merged[term_id(term)] = merged.get(term_id(term), 0) + n
    return merged
