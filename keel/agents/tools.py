"""Tools an agent can call: the contract between the agent loop and whatever runs a tool.

A tool is a plain Python function made a Temporal activity by :func:`tool`; register it on your
worker like any activity and hand it to :func:`keel.agents.run_agent`. Every call is its own
durable step (an activity with the tool's retry policy). Results never travel through workflow
history: the activity stores the result text in Keel's blob store (content-addressed) and
returns a :class:`ToolResult` with its key and a short preview; the next model turn reads it
from there.

The contract (so other tool sources, e.g. MCP servers in :mod:`keel.agents.mcp`, plug in):

* the model sees :class:`ToolSpec` ``name``, ``description`` and ``parameters`` (a JSON schema);
* the loop runs activity ``ToolSpec.activity`` with a :class:`ToolCall` on ``task_queue``
  (default: the workflow's own queue) and expects a :class:`ToolResult`;
* a tool that rejects its arguments raises ``ApplicationError(type="InvalidToolArguments",
  non_retryable=True)``; the model is told the error and may call again.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

PREVIEW_CHARS = 200
INVALID_ARGUMENTS = "InvalidToolArguments"
IDEMPOTENCY_KEY = "idempotency_key"  # a tool parameter of this name gets the call's key, not the model's
TENANT = "tenant"  # ... and one of this name the run's tenant: a model never picks whose data a tool sees
BOUND = (IDEMPOTENCY_KEY, TENANT)


@dataclass
class ToolSpec:
    """One tool as the model sees it and as the loop runs it.

    :param name: what the model calls it (``^[a-zA-Z0-9_-]{1,64}$`` for every provider).
    :param description: what it does and when to use it: the model's only guide.
    :param parameters: JSON schema of its arguments object.
    :param activity: the activity type the loop runs with a :class:`ToolCall`.
    :param task_queue: where that activity runs (None: the calling workflow's queue).
    :param target: passed through in :attr:`ToolCall.target` (e.g. which MCP server).
    :param start_to_close_seconds: the longest one attempt may take.
    :param max_attempts: Temporal attempts of one call (0: unlimited).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    activity: str
    task_queue: str | None = None
    target: str = ""
    start_to_close_seconds: float = 300.0
    max_attempts: int = 3

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(maximum_attempts=self.max_attempts, non_retryable_error_types=[INVALID_ARGUMENTS])

    @property
    def start_to_close(self) -> timedelta:
        return timedelta(seconds=self.start_to_close_seconds)

    def for_model(self) -> dict[str, Any]:
        """Provider-neutral: ``{"name", "description", "parameters"}``."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass
class ToolCall:
    """One call the model asked for.

    :param id: the model's call id (the reply to it quotes it).
    :param arguments: the arguments object as JSON text, as the model wrote it.
    :param idempotency_key: stable across retries and worker crashes (the run's id and the call
        id): a tool with a side effect uses it to do its effect once.
    """

    id: str
    name: str
    arguments: str = "{}"
    target: str = ""
    tenant: str = ""
    idempotency_key: str = ""


@dataclass
class ToolResult:
    """What a call produced: the full text in the blob store, a preview in history."""

    id: str
    name: str
    content_key: str = ""  # blob key of the full result text ("" with an error)
    preview: str = ""
    size: int = 0  # characters of the full result
    error: str | None = None  # shown to the model instead of a result

    def message(self) -> dict[str, Any]:
        """The conversation message that answers the call (by reference)."""
        msg: dict[str, Any] = {"role": "tool", "tool_call_id": self.id, "name": self.name}
        if self.error is not None:
            msg["content"] = f"error: {self.error}"
        else:
            msg["content_key"] = self.content_key
        return msg


def store_result(call: ToolCall, text: str) -> ToolResult:
    """Store a tool's result text (content-addressed) and describe it: for tool activities."""
    from keel.activities._runtime import runtime

    key = runtime().blobs.put(text.encode())
    return ToolResult(id=call.id, name=call.name, content_key=key, preview=text[:PREVIEW_CHARS], size=len(text))


def result_text(value: Any) -> str:
    """A tool's return value as the text the model reads."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    from pydantic import TypeAdapter

    return TypeAdapter(type(value)).dump_json(value).decode()


@dataclass
class _ToolFn:
    fn: Callable[..., Any]
    arguments: type[BaseModel]
    bound: list[str]  # of BOUND: filled from the call, not by the model


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    task_queue: str | None = None,
    start_to_close: timedelta = timedelta(minutes=5),
    max_attempts: int = 3,
):
    """Make a plain function (sync or async) an agent tool: an activity named ``keel.tool.<name>``.

    Its parameters (type-annotated) become the JSON schema the model sees; the docstring's
    first paragraph its description. Two parameter names are Keel's, not the model's (not in
    the schema): ``idempotency_key`` receives the call's key, stable across retries (use it to do
    a side effect once), and ``tenant`` the run's tenant (a tool reads that tenant's data only).

    >>> from keel.agents import tool
    >>> @tool
    ... def add(a: int, b: int) -> int:
    ...     '''Add two integers.'''
    ...     return a + b
    >>> add.keel_tool.name, add.keel_tool.activity, sorted(add.keel_tool.parameters["properties"])
    ('add', 'keel.tool.add', ['a', 'b'])
    >>> add.fn(2, 3)  # the plain function
    5

    Register ``add`` in your worker's ``activities=[...]`` and pass it to ``run_agent(tools=[add])``.
    """
    if fn is None:
        return functools.partial(
            tool, name=name, description=description, task_queue=task_queue, start_to_close=start_to_close,
            max_attempts=max_attempts,
        )
    tool_name = name or fn.__name__
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # string annotations resolved in fn's module
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name in BOUND:
            continue
        annotation = hints.get(p.name, Any)
        fields[p.name] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    arguments = create_model(f"{tool_name}_arguments", **fields)
    doc = inspect.getdoc(fn) or ""
    spec = ToolSpec(
        name=tool_name,
        description=description or doc.split("\n\n", 1)[0].strip() or tool_name,
        parameters=arguments.model_json_schema(),
        activity=f"keel.tool.{tool_name}",
        task_queue=task_queue,
        start_to_close_seconds=start_to_close.total_seconds(),
        max_attempts=max_attempts,
    )
    impl = _ToolFn(fn, arguments, [name for name in BOUND if name in sig.parameters])

    async def run_tool(call: ToolCall) -> ToolResult:
        return await call_tool(impl, call)

    run_tool.__name__ = run_tool.__qualname__ = tool_name
    run_tool.__doc__ = fn.__doc__
    run_tool.keel_tool = spec  # type: ignore[attr-defined]
    run_tool.fn = fn  # type: ignore[attr-defined]
    run_tool.keel_tool_impl = impl  # type: ignore[attr-defined]
    return activity.defn(name=spec.activity)(run_tool)


def parse_arguments(impl: _ToolFn, call: ToolCall) -> dict[str, Any]:
    try:
        raw = json.loads(call.arguments or "{}")
        if not isinstance(raw, dict):
            raise ValueError("the arguments must be a JSON object")
        args = impl.arguments.model_validate(raw)
    except (ValueError, ValidationError) as e:
        raise ApplicationError(f"invalid arguments for {call.name}: {e}", type=INVALID_ARGUMENTS, non_retryable=True) from None
    kwargs = {k: getattr(args, k) for k in impl.arguments.model_fields}
    values = {IDEMPOTENCY_KEY: call.idempotency_key, TENANT: call.tenant}
    kwargs.update({name: values[name] for name in impl.bound})
    return kwargs


async def call_tool(impl: _ToolFn, call: ToolCall) -> ToolResult:
    """Run a tool for one call (in an activity, or in-process) and store its result."""
    kwargs = parse_arguments(impl, call)
    if inspect.iscoroutinefunction(impl.fn):
        value = await impl.fn(**kwargs)
    else:
        value = await asyncio.to_thread(impl.fn, **kwargs)
    return store_result(call, result_text(value))


def spec_of(t: Any) -> ToolSpec:
    """The :class:`ToolSpec` of a tool (made by :func:`tool`) or a spec itself."""
    if isinstance(t, ToolSpec):
        return t
    spec = getattr(t, "keel_tool", None)
    if spec is None:
        raise TypeError(f"{t!r} is not a tool: decorate it with @keel.agents.tool (or pass a ToolSpec)")
    return spec


__all__ = ["ToolCall", "ToolResult", "ToolSpec", "call_tool", "spec_of", "store_result", "tool"]
