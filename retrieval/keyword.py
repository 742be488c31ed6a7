"""The keyword side of hybrid search: BM25 as Qdrant sparse vectors.

Documents get BM25's term-frequency part, ``tf·(k1+1) / (tf + k1·(1-b+b·len/avg_len))``;
queries get weight 1 per distinct term. The collection's sparse vector uses Qdrant's IDF
modifier, so Qdrant multiplies in the IDF computed over the live collection: the keyword index
is persistent, shared by every reader, updated incrementally and filtered like the dense side.

Tokens: lowercase ``[a-z0-9]+`` runs, English stop words dropped, then Snowball (Porter 2)
stemming so "proteins"/"protein" and "regulates"/"regulation" meet. On SciFact *train* stemming
lifts BM25 nDCG@10 from 0.663 to 0.698 (``bench/retrieval_quality.py``). Changing the tokenizer
changes every term id: an index built with another tokenizer must be rebuilt.

Term ids: :func:`term_id` (crc32) without encryption; with it, a keyed hash per tenant passed as
``term_ids`` (:mod:`keel.retrieval.sealed`), since a crc32 id is one dictionary pass from its word
(the engine's IDF then counts the tenant's own chunks). No vocabulary is kept anywhere: the
index only ever sees ids.

>>> tokenize("Proteins regulating the cells' regulation")
['protein', 'regul', 'cell', 'regul']
>>> doc = bm25_document_vector("The lantern lights the lantern room")
>>> sorted(zip(doc.indices, doc.values))[0][1] > 0
True
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import Counter
from collections.abc import Callable
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
STEMMER = "english"  # Snowball English (Porter 2), via PyStemmer
_local = threading.local()  # PyStemmer objects are not thread-safe; activities run in threads


@dataclass(frozen=True)
class SparseTerms:
    indices: list[int]
    values: list[float]


def tokenize(text: str) -> list[str]:
    return _stemmer().stemWords([t for t in _WORD.findall(text.lower()) if t not in STOP_WORDS])


def _stemmer():
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import Stemmer  # PyStemmer

        stemmer = _local.stemmer = Stemmer.Stemmer(STEMMER)
    return stemmer


def term_id(term: str) -> int:
    """A stable 32-bit id per term (Qdrant sparse indices are uint32)."""
    return zlib.crc32(term.encode())


def bm25_document_vector(text: str, *, avg_len: float = AVG_LEN, term_ids: Callable[[str], int] = term_id) -> SparseTerms:
    tokens = tokenize(text)
    norm = K1 * (1 - B + B * len(tokens) / avg_len)
    counts = _by_id(Counter(tokens), term_ids)
    return SparseTerms(
        indices=list(counts), values=[tf * (K1 + 1) / (tf + norm) for tf in counts.values()]
    )


def bm25_query_vector(text: str, *, term_ids: Callable[[str], int] = term_id) -> SparseTerms:
    ids = _by_id(Counter(set(tokenize(text))), term_ids)
    return SparseTerms(indices=list(ids), values=[1.0] * len(ids))


def _by_id(counts: Counter[str], term_ids: Callable[[str], int]) -> dict[int, int]:
    # Two terms can share an id (32 bits); merge them rather than send a duplicate index.
    merged: dict[int, int] = {}
    for term, n in counts.items():
        tid = term_ids(term)
        merged[tid] = merged.get(tid, 0) + n
    return merged
