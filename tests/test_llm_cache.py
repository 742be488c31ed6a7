"""The answer cache: the store on its own, then through real runs (the ``chain_keel`` deployment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keel.llm.cache import AnswerCache, CachedAnswer
from keel.search_attributes import KEEL_CACHE, KEEL_COST_USD
from keel.testing.fake_openai import Step
from tests.conftest import KeelEnv
from tests.llm_helpers import ask, ingest_history, reset_providers


# --- the store ----------------------------------------------------------------------------------


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _entry(tenant: str, answer: str = "A.", question: str = "q?", embedding=None, cited=("c1",)) -> CachedAnswer:
    return CachedAnswer(tenant, "answer-v1", "m", "p", question, ["c1", "c2"], answer, list(cited), "wf-1", embedding)


@pytest.fixture(params=["clear", "sealed"])
def cache(request, tmp_path) -> AnswerCache:
    keys = None
    if request.param == "sealed":  # encryption on: entries sealed per tenant, keyed exact keys
        from keel._codec import Keys

        keys = Keys(keys_dir=tmp_path / "keys", master_key_file=tmp_path / "master.key", keyring=tmp_path / "keyring.json",
                    auto_create=True, create_master=True)
    return AnswerCache(tmp_path / "cache.sqlite3", ttl_seconds=60, semantic_threshold=0.95, keys=keys)


def test_exact_hits_need_the_same_tenant_model_prompt_question_and_chunks(cache):
    cache.store(_entry("acme"), now=0)
    assert cache.lookup_exact("acme", "answer-v1", "q?", ["c1", "c2"], ["m"], now=1).answer == "A."
    assert cache.lookup_exact("globex", "answer-v1", "q?", ["c1", "c2"], ["m"], now=1) is None
    assert cache.lookup_exact("acme", "answer-v2", "q?", ["c1", "c2"], ["m"], now=1) is None
    assert cache.lookup_exact("acme", "answer-v1", "q?", ["c2", "c1"], ["m"], now=1) is None
    assert cache.lookup_exact("acme", "answer-v1", "q?", ["c1", "c2"], ["other-model"], now=1) is None
    assert cache.lookup_exact("acme", "answer-v1", "q?", ["c1", "c2"], ["m"], now=61) is None  # TTL


def test_semantic_hits_stay_within_the_tenant(cache):
    cache.store(_entry("acme", "acme's answer", embedding=_unit(1, 0, 0)), now=0)
    cache.store(_entry("globex", "globex's answer", embedding=_unit(1, 0.01, 0)), now=0)
    hit, similarity = cache.lookup_semantic("acme", "answer-v1", _unit(1, 0.02, 0), ["c1", "c2"], ["m"], now=1)
    assert hit.answer == "acme's answer" and similarity > 0.99
    # globex's entry is closer to this query than acme's, and still never served to acme
    assert cache.lookup_semantic("initech", "answer-v1", _unit(1, 0.01, 0), ["c1"], ["m"], now=1) is None
    assert cache.lookup_semantic("acme", "answer-v1", _unit(0, 1, 0), ["c1"], ["m"], now=1) is None  # not similar
    assert cache.lookup_semantic("acme", "answer-v1", _unit(1, 0, 0), ["c1"], ["m"], now=61) is None  # TTL


def test_semantic_hits_need_their_cited_chunks_retrieved_again(cache):
    cache.store(_entry("acme", embedding=_unit(1, 0, 0), cited=("c1",)), now=0)
    assert cache.lookup_semantic("acme", "answer-v1", _unit(1, 0, 0), ["c2", "c3"], ["m"], now=1) is None
    assert cache.lookup_semantic("acme", "answer-v1", _unit(1, 0, 0), ["c3", "c1"], ["m"], now=1) is not None


# --- through real runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def env(chain_keel: KeelEnv) -> KeelEnv:
    await ingest_history(chain_keel, ["cache-a", "cache-b"])
    return chain_keel


@pytest.fixture(autouse=True)
async def _fresh_providers(request, fake_providers):
    if "env" in request.fixturenames:
        await reset_providers(request.getfixturevalue("env"), fake_providers)
    yield


def scripted_answer(text: str) -> Step:
    return Step.ok(json.dumps({"answer": text, "citations": ["S1"]}))


async def test_a_repeated_question_is_a_cache_hit_visible_as_its_own_run(env, fake_providers):
    primary, _ = fake_providers
    primary.script(Step.answer())  # an answer from its first source: grounded
    first, first_handle = await ask(env, "cache-a", use_cache=True)
    assert first.cache is None and first.provider == "primary" and first.cost_usd > 0 and not first.degraded
    again, handle = await ask(env, "cache-a", use_cache=True)
    assert len(primary.requests) == 1  # no LLM call
    assert again.cache == "exact" and again.answer == first.answer and again.citations == first.citations
    assert again.cost_usd == 0 and again.provider_attempts == [] and again.model == "primary-model"
    assert again.settings.cache_source_workflow_id == first_handle.id
    described = await handle.describe()  # a completed run of its own, marked as a hit
    assert described.status.name == "COMPLETED"
    assert described.typed_search_attributes.get(KEEL_CACHE) == "exact"
    assert described.typed_search_attributes.get(KEEL_COST_USD) == 0
    assert (await first_handle.describe()).typed_search_attributes.get(KEEL_CACHE) == "miss"


async def test_a_near_identical_question_is_a_semantic_hit(env, fake_providers):
    primary, _ = fake_providers
    primary.script(Step.answer())  # an answer from its first source: grounded
    first, _ = await ask(env, "cache-a", "When did the Keepers' Archive open?", use_cache=True)
    result, _ = await ask(env, "cache-a", "when did the keepers archive open", use_cache=True)
    assert len(primary.requests) == 1 and first.cache is None and not first.degraded, (first.answer, first.degraded_reason)
    assert result.cache == "semantic" and result.answer == first.answer
    assert result.settings.cache_similarity >= env.settings.semantic_cache_threshold


async def test_the_cache_never_serves_one_tenants_answer_to_another(env, fake_providers):
    primary, _ = fake_providers
    # Two different answers, each supported by the source (answers are checked for grounding).
    primary.script(scripted_answer("There were 41 founding members."), scripted_answer("The co-op had 41 founding members."))
    question = "How many founding members did the cooperative have?"
    a, _ = await ask(env, "cache-a", question, use_cache=True)
    b, _ = await ask(env, "cache-b", question, use_cache=True)  # same document, same question
    assert a.answer == "There were 41 founding members." and b.answer == "The co-op had 41 founding members."
    assert b.cache is None and len(primary.requests) == 2
    a_again, _ = await ask(env, "cache-a", question, use_cache=True)
    b_again, _ = await ask(env, "cache-b", question, use_cache=True)
    assert (a_again.answer, a_again.cache) == ("There were 41 founding members.", "exact")
    assert (b_again.answer, b_again.cache) == ("The co-op had 41 founding members.", "exact")


async def test_no_cache_bypasses_the_lookup_and_refreshes_the_entry(env, fake_providers):
    primary, _ = fake_providers
    primary.script(
        scripted_answer("The Greyhaven Ledges, a reef that had wrecked at least nineteen vessels."),
        scripted_answer("The Greyhaven Ledges had wrecked at least nineteen vessels between 1840 and 1866."),
    )
    question = "Which reef had wrecked at least nineteen vessels?"
    await ask(env, "cache-a", question, use_cache=True)
    fresh, _ = await ask(env, "cache-a", question, use_cache=False)
    assert fresh.cache is None and fresh.answer == "The Greyhaven Ledges had wrecked at least nineteen vessels between 1840 and 1866." and len(primary.requests) == 2, fresh.degraded_reason
    cached, _ = await ask(env, "cache-a", question, use_cache=True)
    assert cached.cache == "exact" and cached.answer == "The Greyhaven Ledges had wrecked at least nineteen vessels between 1840 and 1866."


async def test_degraded_answers_are_not_cached(env, fake_providers):
    primary, fallback = fake_providers
    primary.default = fallback.default = Step.schema_violation()
    question = "Who proposed demolishing the Greyhaven keeper's dwelling?"
    degraded, _ = await ask(env, "cache-a", question, use_cache=True)
    assert degraded.degraded and degraded.cache is None
    primary.default = fallback.default = Step.answer()
    result, _ = await ask(env, "cache-a", question, use_cache=True)
    assert not result.degraded and result.cache is None
