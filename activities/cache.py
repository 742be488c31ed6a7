"""Answer-cache activities: look an answer up before calling an LLM, store a validated one."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from temporalio import activity

from activities._runtime import runtime
from keel.answer_cache import AnswerCache, CachedAnswer
from keel.contracts import CacheHit, CacheLookupInput, CacheLookupOutput, CacheStoreInput, CacheStoreOutput


@functools.cache
def _cache(path: Path, ttl_seconds: float, threshold: float) -> AnswerCache:
    return AnswerCache(path, ttl_seconds=ttl_seconds, semantic_threshold=threshold)


def answer_cache() -> AnswerCache:
    s = runtime().settings
    return _cache(s.answer_cache_path, s.cache_ttl_seconds, s.semantic_cache_threshold or 1.0)


@activity.defn
def lookup_cached_answer(inp: CacheLookupInput) -> CacheLookupOutput:
    cache, now = answer_cache(), time.time()
    entry = cache.lookup_exact(inp.tenant, inp.prompt_version, inp.question, inp.chunk_ids, inp.models, now=now)
    if entry is not None:
        return _hit(CacheHit.EXACT, entry, None)
    if inp.semantic:
        embedding = runtime().embedder.embed_query(inp.question)
        found = cache.lookup_semantic(inp.tenant, inp.prompt_version, embedding, inp.chunk_ids, inp.models, now=now)
        if found is not None:
            return _hit(CacheHit.SEMANTIC, *found)
    return CacheLookupOutput()


def _hit(kind: CacheHit, entry: CachedAnswer, similarity: float | None) -> CacheLookupOutput:
    return CacheLookupOutput(
        hit=kind,
        answer=entry.answer,
        cited_chunk_ids=entry.cited_chunk_ids,
        model=entry.model,
        provider=entry.provider,
        similarity=None if similarity is None else round(similarity, 4),
        source_workflow_id=entry.workflow_id,
    )


@activity.defn
def store_cached_answer(inp: CacheStoreInput) -> CacheStoreOutput:
    embedding = runtime().embedder.embed_query(inp.question) if inp.semantic else None
    answer_cache().store(
        CachedAnswer(
            tenant=inp.tenant,
            prompt_version=inp.prompt_version,
            model=inp.model,
            provider=inp.provider,
            question=inp.question,
            chunk_ids=inp.chunk_ids,
            answer=inp.answer,
            cited_chunk_ids=inp.cited_chunk_ids,
            workflow_id=inp.workflow_id,
            embedding=embedding,
        ),
        now=time.time(),
    )
    return CacheStoreOutput(stored=True)


CACHE_ACTIVITIES = [lookup_cached_answer, store_cached_answer]
