"""The agent loop's typed values. No I/O and no Temporal imports: safe in workflow code."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from keel.agents.tools import ToolSpec
from keel.llm.types import Message, PolicyDecision, ProviderAttempt, Usage

T = TypeVar("T")


class AgentStop(str, enum.Enum):
    """Why an agent run ended.

    >>> AgentStop("max_turns") is AgentStop.MAX_TURNS
    True
    """

    ANSWERED = "answered"  # a final answer that validated
    INVALID_OUTPUT = "invalid_output"  # the final answer stayed invalid after the repairs
    MAX_TURNS = "max_turns"  # the model asked for more turns than allowed
    BUDGET = "budget"  # the run budget is spent
    TIMEOUT = "timeout"  # the wall-time limit passed
    LLM_FAILED = "llm_failed"  # every provider failed a turn


@dataclass
class AgentLimits:
    """When an agent stops without an answer.

    :param max_turns: model turns (each turn may call several tools at once).
    :param max_seconds: wall time since the agent started (None: no limit).
    :param budget_usd: LLM spend of the agent, every attempt counted (None: no limit).
    :param max_repairs: re-asks when the final answer does not validate.
    :param turns_per_run: the agent's workflow continues as new after this many turns, so
        its history stays small however long the session runs.

    >>> AgentLimits(max_turns=5).max_turns
    5
    """

    max_turns: int = 20
    max_seconds: float | None = None
    budget_usd: float | None = None
    max_repairs: int = 1
    max_tokens: int | None = None
    turns_per_run: int = 100


@dataclass
class ToolCallRecord:
    """One tool call of the agent, as the run's result lists it."""

    turn: int
    id: str
    name: str
    arguments: str
    preview: str = ""
    size: int = 0
    error: str | None = None


@dataclass
class AgentState:
    """What an agent carries from one workflow run to the next (continue-as-new)."""

    head: str = ""  # the conversation so far (blob key of its last segment)
    turns: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    attempts: list[ProviderAttempt] = field(default_factory=list)
    decisions: list[PolicyDecision] = field(default_factory=list)
    requests: int = 0
    started_at: float = 0.0  # workflow time, seconds since the epoch
    model: str = ""
    provider: str = ""


@dataclass
class AgentInput:
    tenant: str
    schema: dict[str, Any]
    tools: list[ToolSpec]
    limits: AgentLimits
    tool_queue: str  # where tools without a queue of their own run (the caller's queue)
    messages: list[Message] = field(default_factory=list)  # the opening conversation
    append: list[dict[str, Any]] = field(default_factory=list)  # new messages after state.head
    state: AgentState = field(default_factory=AgentState)


@dataclass
class AgentOutput:
    state: AgentState
    final: str | None = None  # the model's final answer (JSON text), not validated yet
    stop: AgentStop | None = None  # set when the agent stopped without a final answer
    reason: str = ""


@dataclass
class AgentResult(Generic[T]):
    """What :func:`keel.agents.run_agent` returns.

    ``value`` is the validated answer when ``ok``; otherwise ``stop`` and ``reason`` say why
    there is none. ``tool_calls`` lists every call (with a preview of its result),
    ``attempts`` every LLM attempt with its usage and cost.

    >>> r = AgentResult(ok=False, stop=AgentStop.MAX_TURNS, reason="20 turns without a final answer")
    >>> r.ok, r.stop.value
    (False, 'max_turns')
    """

    ok: bool
    value: T | None = None
    stop: AgentStop = AgentStop.ANSWERED
    reason: str = ""
    errors: list[str] = field(default_factory=list)  # validation errors of the last answer
    turns: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    attempts: list[ProviderAttempt] = field(default_factory=list)
    decisions: list[PolicyDecision] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    model: str = ""
    provider: str = ""
    conversation: str = ""  # blob key of the whole conversation's last segment
    workflow_id: str = ""  # the agent's own workflow (its runs and histories in the UI)
