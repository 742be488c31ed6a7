"""LLM calls: the provider chain (clients, providers, policy, prompts) and the generic
:func:`complete` call that puts it behind one durable step.

    clients.py    one HTTP request to an OpenAI-compatible or Anthropic endpoint, failures typed
    providers.py  ProviderConfig: one endpoint of the chain (keel.toml ``[[providers]]``)
    policy.py     circuit breaker, budgets, chain choice: pure functions
    prompts.py    Keel's own RAG answer prompt, schema and extractive fallback
    cache.py      the answer cache (SQLite, exact and semantic)
    types.py      messages, results, attempts, plans, entity state
    _complete.py  complete(): inside a workflow durable steps, outside one in-process

>>> import asyncio
>>> from pydantic import BaseModel
>>> from keel import llm
>>> from keel.testing import FakeOpenAI, Step, in_process
>>> class Priority(BaseModel):
...     level: int
>>> with FakeOpenAI() as fake, in_process(fake):
...     fake.script(Step.ok('{"level": "high"}'), Step.ok('{"level": 2}'))  # invalid, then repaired
...     out = asyncio.run(llm.complete("How urgent is an outage?", Priority, tenant="acme"))
>>> out.ok, out.value.level, [a.outcome.value for a in out.attempts]
(True, 2, ['invalid', 'answered'])
"""

from keel.llm._complete import complete, run_usage
from keel.llm.providers import ProviderConfig, ProviderKind
from keel.llm.types import (
    AttemptOutcome,
    CacheHit,
    DecisionKind,
    LLMCache,
    LLMResult,
    Message,
    PolicyDecision,
    ProviderAttempt,
    RunBudget,
    Usage,
)

__all__ = [
    "AttemptOutcome",
    "CacheHit",
    "DecisionKind",
    "LLMCache",
    "LLMResult",
    "Message",
    "PolicyDecision",
    "ProviderAttempt",
    "ProviderConfig",
    "ProviderKind",
    "RunBudget",
    "Usage",
    "complete",
    "run_usage",
]
