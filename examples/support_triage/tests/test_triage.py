"""The triage workflows on a real Temporal dev server, with a scripted fake LLM."""

from __future__ import annotations

import json
from datetime import timedelta

from keel import ProviderConfig
from keel.testing import Step
from workflows import Article, IndexArticles, IndexArticlesInput, Ticket, TriageTicket

TENANT = "acme"
ARTICLES = [
    Article(
        "refunds",
        "Refunds and double charges",
        "If your card was charged twice for one order, the duplicate charge is refunded automatically "
        "within 5 business days. Refunds always go back to the original payment method.",
    ),
    Article(
        "password-reset",
        "Resetting your password",
        "Use the 'Forgot password' link on the sign-in page. The reset email arrives within a minute "
        "and its link expires after 30 minutes.",
    ),
    Article(
        "shipping",
        "Shipping times",
        "Orders ship within 2 business days. Standard delivery takes 3 to 5 days, express delivery 1 to 2 days.",
    ),
    Article(
        "api-errors",
        "API error 503",
        "A 503 from the API means the service is overloaded. Retry with exponential backoff; "
        "the status page lists ongoing incidents.",
    ),
]
NAME, EMAIL = "John Smith", "john.smith@example.com"
TICKET = Ticket(
    TENANT,
    "Charged twice for my order",
    f"Hi, this is {NAME} ({EMAIL}). My card was charged twice for order 1042 yesterday. "
    "Please refund the duplicate charge.",
)
PRICE_PROMPT, PRICE_COMPLETION = 0.5, 1.5  # USD per 1k tokens
# A workflow task that keeps failing is retried, not failed: without a limit a broken workflow
# would hang the test instead of failing it.
TIMEOUT = timedelta(minutes=2)


def triage_json(cited: list[str], category: str = "billing", priority: int = 2) -> str:
    return json.dumps(
        {
            "category": category,
            "priority": priority,
            "answer": "The duplicate charge is refunded within 5 business days.",
            "cited_articles": cited,
        }
    )


def priced(fake) -> list[ProviderConfig]:
    return [
        ProviderConfig(
            name="fake", base_url=fake.base_url, model="fake-model", timeout_seconds=10,
            price_prompt_per_1k=PRICE_PROMPT, price_completion_per_1k=PRICE_COMPLETION,
        )
    ]


def words(text: str) -> int:
    return len(text.split())  # how the fake server counts tokens


async def index_kb(env) -> None:
    indexed = await env.execute(IndexArticles.run, IndexArticlesInput(TENANT, ARTICLES), execution_timeout=TIMEOUT)
    assert indexed.articles == len(ARTICLES)
    assert indexed.chunks >= len(ARTICLES)


async def test_ticket_is_triaged_from_retrieved_articles_without_pii(triage_env, keel_fake_llm):
    reply = triage_json(["refunds"])
    async with triage_env(providers=priced(keel_fake_llm)) as env:
        await index_kb(env)
        keel_fake_llm.script(Step.ok(reply))
        result = await env.execute(TriageTicket.run, TICKET, execution_timeout=TIMEOUT)

    assert not result.escalated and result.reason is None
    assert (result.category, result.priority) == ("billing", 2)
    assert result.cited_articles == ["refunds"]
    assert result.cited_sources == ["Refunds and double charges"]
    assert result.pii_counts == {"PERSON": 1, "EMAIL_ADDRESS": 1}

    assert len(keel_fake_llm.requests) == 1
    request = keel_fake_llm.requests[0]
    sent = json.dumps(request)
    for secret in (EMAIL, "John", "Smith"):
        assert secret not in sent
    assert "<EMAIL_ADDRESS>" in sent and "<PERSON>" in sent
    # The article cited was retrieved: it is in the prompt and among the ids the schema allows.
    prompt = request["messages"][-1]["content"]
    assert "[refunds] Refunds and double charges" in prompt
    allowed = request["response_format"]["json_schema"]["schema"]["properties"]["cited_articles"]["items"]["enum"]
    assert "refunds" in allowed and set(allowed) <= {a.id for a in ARTICLES}

    assert result.attempts == 1
    prompt_tokens = sum(words(m["content"]) for m in request["messages"])
    expected = (prompt_tokens * PRICE_PROMPT + words(reply) * PRICE_COMPLETION) / 1000
    assert result.cost_usd > 0
    assert abs(result.cost_usd - expected) < 1e-9


async def test_output_that_stays_invalid_is_escalated(triage_env, keel_fake_llm):
    async with triage_env() as env:
        await index_kb(env)
        keel_fake_llm.script(Step.schema_violation(), Step.schema_violation())
        result = await env.execute(TriageTicket.run, TICKET, execution_timeout=TIMEOUT)

    assert result.escalated
    assert result.reason is not None and "invalid" in result.reason
    assert result.category is None and result.cited_articles == []
    assert len(keel_fake_llm.requests) == 2  # the reply, one repair, then no further try
    assert result.attempts == 2


async def test_an_uncited_article_is_repaired(triage_env, keel_fake_llm):
    async with triage_env() as env:
        await index_kb(env)
        # Valid JSON, but it cites an article that does not exist: only validate= catches that.
        keel_fake_llm.script(Step.ok(triage_json(["made-up-article"])), Step.ok(triage_json(["refunds"])))
        result = await env.execute(TriageTicket.run, TICKET, execution_timeout=TIMEOUT)

    assert not result.escalated
    assert result.cited_articles == ["refunds"]
    assert len(keel_fake_llm.requests) == 2
    assert result.attempts == 2
    repair = keel_fake_llm.requests[1]["messages"][-1]["content"]
    assert "made-up-article" in repair and "refunds" in repair


async def test_no_relevant_article_escalates_without_an_llm_call(triage_env, keel_fake_llm):
    async with triage_env() as env:
        await index_kb(env)
        # Another tenant's ticket: that tenant's knowledge base is empty.
        result = await env.execute(TriageTicket.run, Ticket("globex", TICKET.subject, TICKET.body), execution_timeout=TIMEOUT)

    assert result.escalated
    assert result.reason is not None and "no relevant" in result.reason
    assert keel_fake_llm.requests == []
    assert result.attempts == 0 and result.cost_usd == 0
