"""Evaluations and what-if re-runs as workflows (``keel eval``, ``keel whatif``).

``EvaluateRun`` orchestrates; its activities (``keel.activities.evaluate``) do the work and
write per-query rows under the run's output folder, so only aggregates travel through history.

``WhatIfAsk`` re-runs a recorded ask (``AnswerQuestion``) with settings changed: it records the
original run's activity results, keyed by activity type and input, in a blob; the re-run is an
``AnswerQuestion`` child whose memo names that blob, and :class:`WhatIfInterceptor` (a workflow
outbound interceptor registered on the worker) serves every activity whose type and input match
a recorded one from the recording (through the local activity ``keel.whatif_lookup``, so the
result is in the new run's history and replays) instead of running it.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

with workflow.unsafe.imports_passed_through():
    from keel import _deployment
    from keel.activities import evaluate as ev
    from keel.types import RetrievalSettings
    from keel.workflows.answer import AnswerQuestion, AskInput, AskResult


@dataclass
class EvalInput:
    data: str  # a BEIR folder (retrieval) or a JSONL of questions (answers), as the worker sees it
    configs: list[ev.EvalConfig]
    tenant: str = ""  # answers: the tenant whose index answers
    out: str | None = None  # default <data_dir>/evals/<workflow id>
    limit: int | None = None  # first N queries / questions
    split: str = "train"  # BEIR qrels/<split>.tsv
    ask_task_queue: str | None = None  # answers: where the asks run (default the index owner's queue)
    ask_concurrency: int = 2


@dataclass
class EvalResult:
    data: str
    kind: str
    configs: dict[str, dict[str, float]]
    delta: dict[str, Any]
    n_queries: int
    out: str
    files: list[str] = field(default_factory=list)
    indexes: list[ev.BuiltIndex] = field(default_factory=list)


_QUICK = timedelta(minutes=2)
_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=["InvalidRequest"])


@workflow.defn
class EvaluateRun:
    """Data set → one index per distinct index-time setting → each configuration's metrics →
    side-by-side per-query files; the result holds the aggregates and their delta."""

    @workflow.run
    async def run(self, inp: EvalInput) -> EvalResult:
        if not inp.configs:
            inp.configs = [ev.EvalConfig(name="default")]
        info = await workflow.execute_activity(
            ev.eval_inspect,
            ev.InspectInput(inp.data, workflow.info().workflow_id, inp.out, inp.split, inp.limit),
            start_to_close_timeout=_QUICK, retry_policy=_RETRY,
        )
        built: dict[tuple, ev.BuiltIndex] = {}
        results: list[ev.ConfigMetrics] = []
        if info.kind == "retrieval":
            for c in inp.configs:
                if c.index_key not in built:  # search-time changes share one index
                    built[c.index_key] = await workflow.execute_activity(
                        ev.eval_build_index,
                        ev.BuildIndexInput(inp.data, c.chunk_max_tokens, c.chunk_overlap_tokens, c.embedding_model),
                        start_to_close_timeout=timedelta(hours=3), heartbeat_timeout=timedelta(minutes=2), retry_policy=_RETRY,
                    )
                results.append(
                    await workflow.execute_activity(
                        ev.eval_retrieval,
                        ev.RetrievalEvalInput(inp.data, built[c.index_key].path, c, info.out, inp.split, inp.limit),
                        start_to_close_timeout=timedelta(hours=1), heartbeat_timeout=timedelta(minutes=2), retry_policy=_RETRY,
                    )
                )
        else:
            if not inp.tenant:
                raise ev.ApplicationError("an answer evaluation needs the tenant to ask (--tenant)", type="InvalidRequest", non_retryable=True)
            questions = (
                await workflow.execute_activity(
                    ev.eval_read_questions, ev.ReadQuestionsInput(inp.data, inp.limit),
                    start_to_close_timeout=_QUICK, retry_policy=_RETRY,
                )
            ).questions
            gate = asyncio.Semaphore(max(1, inp.ask_concurrency))
            for ci, c in enumerate(inp.configs):
                rows = await asyncio.gather(*(self._ask(inp, ci, c, i, q, gate) for i, q in enumerate(questions)))
                results.append(
                    await workflow.execute_activity(
                        ev.eval_score_answers, ev.ScoreAnswersInput(c, info.out, list(rows), inp.tenant),
                        start_to_close_timeout=timedelta(minutes=10), retry_policy=_RETRY,
                    )
                )
        files = await workflow.execute_activity(
            ev.eval_report, ev.ReportInput(info.out, info.kind, inp.data, results),
            start_to_close_timeout=_QUICK, retry_policy=_RETRY,
        )
        configs = {r.name: r.metrics for r in results}
        return EvalResult(
            data=inp.data, kind=info.kind, configs=configs, delta=ev.deltas(configs), n_queries=info.n_queries,
            out=info.out, files=[files.summary, files.json, files.csv], indexes=list(built.values()),
        )

    async def _ask(self, inp: EvalInput, ci: int, c: ev.EvalConfig, i: int, q: ev.QuestionSpec, gate) -> ev.AnsweredRow:
        ask = AskInput(
            tenant=inp.tenant, question=q.question,
            retrieval=RetrievalSettings(top_k=c.top_k, prefetch_k=c.prefetch_k, min_relevance=c.min_relevance),
            prompt_version=c.prompt_version, use_cache=c.use_cache, max_cost_usd=c.max_cost_usd,
        )
        child_id = f"{workflow.info().workflow_id}-c{ci}-q{i}"
        async with gate:
            try:
                r: AskResult = await workflow.execute_child_workflow(
                    AnswerQuestion.run, ask, id=child_id,
                    task_queue=inp.ask_task_queue or _deployment.current().index_task_queue,
                )
            except Exception as e:  # noqa: BLE001  a failed ask is a row with its error, not a failed evaluation
                return ev.AnsweredRow(question=q, workflow_id=child_id, error=f"{type(e).__name__}: {e}")
        return ev.AnsweredRow(
            question=q, workflow_id=child_id, answer=r.answer, cited_documents=[x.document for x in r.citations],
            cited_chunks=[x.chunk_id for x in r.citations], answerable=r.answerable, degraded=r.degraded,
            cost_usd=r.cost_usd, tokens=r.usage.prompt_tokens + r.usage.completion_tokens, attempts=r.attempts,
        )


# --- what-if -----------------------------------------------------------------------------------


@dataclass
class WhatIfInput:
    workflow_id: str  # the recorded ask
    sets: dict[str, str] = field(default_factory=dict)  # setting -> new value (keel whatif --set)
    run_id: str | None = None
    task_queue: str | None = None  # where the re-run runs (default the index owner's queue)


@dataclass
class WhatIfResult:
    workflow_id: str  # the re-run (an AnswerQuestion)
    original_workflow_id: str
    changed: dict[str, str]
    original: ev.RecordedSummary
    rerun: ev.RecordedSummary
    recorded: int  # activity results the original run had
    reused: dict[str, int]  # activity type -> results served from the recording
    executed: dict[str, int]  # activity type -> activities the re-run ran
    delta: dict[str, Any] = field(default_factory=dict)


@workflow.defn
class WhatIfAsk:
    """Record a finished ask's step results, re-run it with settings changed reusing every step
    whose input is unchanged, and report what changed."""

    @workflow.run
    async def run(self, inp: WhatIfInput) -> WhatIfResult:
        rec = await workflow.execute_activity(
            ev.whatif_record, ev.WhatIfRecordInput(inp.workflow_id, inp.run_id, dict(inp.sets)),
            start_to_close_timeout=timedelta(minutes=5), retry_policy=_RETRY,
        )
        child_id = f"{workflow.info().workflow_id}-ask"
        r: AskResult = await workflow.execute_child_workflow(
            AnswerQuestion.run, rec.ask, id=child_id,
            task_queue=inp.task_queue or _deployment.current().index_task_queue,
            memo={ev.WHATIF_MEMO: rec.key, ev.WHATIF_TENANT_MEMO: rec.tenant},
        )
        counts = await workflow.execute_activity(
            ev.whatif_step_counts, ev.StepCountInput(child_id), start_to_close_timeout=_QUICK, retry_policy=_RETRY,
        )
        rerun = ev.RecordedSummary(
            answer=r.answer, citations=[c.chunk_id for c in r.citations], documents=[c.document for c in r.citations],
            cost_usd=r.cost_usd, prompt_tokens=r.usage.prompt_tokens, completion_tokens=r.usage.completion_tokens,
            attempts=r.attempts, model=r.model, degraded=r.degraded,
        )
        o = rec.original
        delta = {
            "answer_changed": r.answer != o.answer,
            "citations_added": [c for c in rerun.citations if c not in o.citations],
            "citations_removed": [c for c in o.citations if c not in rerun.citations],
            "cost_usd": round(rerun.cost_usd - o.cost_usd, 8),
            "prompt_tokens": rerun.prompt_tokens - o.prompt_tokens,
            "completion_tokens": rerun.completion_tokens - o.completion_tokens,
            "attempts": rerun.attempts - o.attempts,
            "degraded_changed": rerun.degraded != o.degraded,
        }
        return WhatIfResult(
            workflow_id=child_id, original_workflow_id=inp.workflow_id, changed=rec.changed, original=o, rerun=rerun,
            recorded=rec.recorded, reused=counts.reused, executed=counts.executed, delta=delta,
        )


# --- interceptors ----------------------------------------------------------------------------------

_OWN = {"keel.whatif_lookup"}
_LOOKUP_TIMEOUT = timedelta(seconds=30)


class WhatIfInterceptor(Interceptor):
    """Serves recorded step results to a what-if run (memo ``keel.whatif``); other runs untouched.

    Register it on every worker that may run an ask (``KeelPlugin`` does)."""

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _WhatIfInbound


class _WhatIfInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WhatIfOutbound(outbound))


class _WhatIfOutbound(WorkflowOutboundInterceptor):
    _key: str | None = None
    _tenant: str = ""
    _read = False

    def _recording(self) -> str | None:
        if not self._read:  # the memo is fixed for the run: deterministic
            self._read = True
            self._key = workflow.memo_value(ev.WHATIF_MEMO, None)
            self._tenant = workflow.memo_value(ev.WHATIF_TENANT_MEMO, "") or ""
        return self._key

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle:
        if input.activity in _OWN or not self._recording():
            return self.next.start_activity(input)
        return self._served(input, self.next.start_activity)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle:
        if input.activity in _OWN or not self._recording():
            return self.next.start_local_activity(input)
        return self._served(input, self.next.start_local_activity)

    def _served(self, input, start) -> Any:
        digest = ev.input_hash(workflow.payload_converter().to_payloads(list(input.args)))
        return asyncio.ensure_future(self._lookup(input, start, digest))

    async def _lookup(self, input, start, digest: str) -> Any:
        found: ev.Lookup = await workflow.execute_local_activity(
            ev.whatif_lookup, ev.LookupInput(self._key or "", self._tenant, input.activity, digest),
            start_to_close_timeout=_LOOKUP_TIMEOUT,
        )
        if not found.found:
            return await start(input)
        from temporalio.api.common.v1 import Payload

        payload = Payload.FromString(base64.b64decode(found.payload))
        return workflow.payload_converter().from_payload(payload, input.ret_type)


# Filled while a recorded run replays (keel.whatif_record): workflow id -> {"type|input hash": result}.
recordings: dict[str, dict[str, str]] = {}


class Recorder(Interceptor):
    """For the ``Replayer`` only: records each activity's (type, input hash) → result."""

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _RecordInbound


class _RecordInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_RecordOutbound(outbound))


class _RecordOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle:
        return self._record(input, self.next.start_activity(input))

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle:
        return self._record(input, self.next.start_local_activity(input))

    def _record(self, input, handle):
        converter = workflow.payload_converter()
        key = f"{input.activity}|{ev.input_hash(converter.to_payloads(list(input.args)))}"
        into = recordings.setdefault(workflow.info().workflow_id, {})

        def done(task) -> None:
            if not task.cancelled() and task.exception() is None:
                into[key] = ev.encode_payload(converter.to_payload(task.result()))

        handle.add_done_callback(done)
        return handle
