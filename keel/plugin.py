"""``KeelPlugin``: what makes a Temporal client and worker a Keel deployment.

Add it to your ``Client`` (workers created from that client inherit it) and write plain
``@workflow.defn`` classes that call :mod:`keel.steps` and :func:`keel.llm.complete`. The
plugin registers:

* Keel's activities and workflows (the built-in pipelines and the breaker/budget entity
  workflows) on your worker, a thread pool for its sync activities, and sandbox pass-through
  for ``keel`` and ``pydantic``;
* a pydantic data converter (your pydantic models can be workflow inputs and outputs), with a
  process-wide cache of Keel's type adapters (``keel._converter``);
* extra pollers around your worker: one task queue per LLM provider
  (``<keel queue>-llm-<name>``, with the provider's ``max_concurrency`` and fleet-wide
  ``requests_per_second``), the index owner's queue (``index=True``), and Keel's own queue
  (``settings.task_queue``) where the entity workflows run, if your worker polls another one.

With the embedded index only one process may own the index: run your worker with
``index=False`` when ``keel up``'s worker already owns it (or run your workflows inside
``keel up --app yourpkg.workflows``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor

from temporalio.converter import DataConverter, DefaultFailureConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker, WorkerConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from keel import _deployment, telemetry
from keel._converter import is_default, keel_data_converter
from keel.config import KeelSettings
from keel.errors import KeelError
from keel.llm.providers import provider_task_queue

PASSTHROUGH_MODULES = ("keel", "pydantic", "pydantic_core", "annotated_types", "opentelemetry")


def keel_activities() -> list:
    from keel.activities.index import INDEX_ACTIVITIES
    from keel.activities.ingest import INGEST_ACTIVITIES
    from keel.activities.llm import LLM_ACTIVITIES
    from keel.activities.approvals import APPROVAL_ACTIVITIES
    from keel.agents.mcp import MCP_ACTIVITIES
    from keel.activities.evaluate import EVAL_ACTIVITIES

    return [*INGEST_ACTIVITIES, *LLM_ACTIVITIES, *INDEX_ACTIVITIES, *MCP_ACTIVITIES, *APPROVAL_ACTIVITIES, *EVAL_ACTIVITIES]


def keel_workflows() -> list[type]:
    from keel.workflows import ALL_WORKFLOWS

    return list(ALL_WORKFLOWS)


class EncodedFailureConverter(DefaultFailureConverter):
    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


def _data_converter(settings: KeelSettings, keys):
    def configure(existing: DataConverter | None) -> DataConverter:
        # Keep a payload converter the user chose; replace only the default (or plain pydantic)
        # one. Keel's codec seals payloads per tenant (keel._codec); a codec of the user's own
        # is kept when encryption is off.
        codec = existing.payload_codec if existing else None
        extra = {}
        if settings.encryption:
            from keel._codec import KeelCodec

            codec = KeelCodec(keys, accept_plaintext=settings.accept_plaintext_payloads)
            # Failure messages and stack traces can quote data (a path, a model's reply): they
            # travel as an encoded payload too, sealed like the rest.
            extra["failure_converter_class"] = EncodedFailureConverter
        if is_default(existing):
            return dataclasses.replace(keel_data_converter, payload_codec=codec, **extra)
        return dataclasses.replace(existing, payload_codec=codec, **extra)

    return configure


def _workflow_runner(existing):
    if isinstance(existing, SandboxedWorkflowRunner):
        return dataclasses.replace(existing, restrictions=existing.restrictions.with_passthrough_modules(*PASSTHROUGH_MODULES))
    return existing


class _TenantScope(Interceptor):
    """Runs each activity in its run's tenant scope: what it sends (signals, blobs) without
    naming a tenant is sealed for that tenant."""

    def __init__(self, keys) -> None:
        self.keys = keys

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TenantScopeActivity(next, self.keys)


class _TenantScopeActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, keys) -> None:
        super().__init__(next)
        self.keys = keys

    async def execute_activity(self, input: ExecuteActivityInput):
        from temporalio import activity

        from keel._codec import tenant_scope

        named = getattr(input.args[0], "tenant", None) if input.args else None
        tenant = named if isinstance(named, str) and named else self.keys.runs.get(activity.info().workflow_id)
        with tenant_scope(tenant):
            return await self.next.execute_activity(input)


class KeelPlugin(SimplePlugin):
    """Keel's activities, workflows, task queues and data converter for a ``Client`` / ``Worker``.

    :param settings: the deployment (task queues, index, provider chain, budgets); defaults to
        ``KeelSettings()`` (``KEEL_*`` environment variables, ``keel.toml``).
    :param index: also serve the index owner's queue (index and search steps). With the
        embedded index exactly one process may do this.
    :param providers: also serve one queue per LLM provider (the requests of ``complete``).
    :param max_concurrent_activities: slots of the extra index and Keel-queue workers.
    :param span_exporter: an OpenTelemetry ``SpanExporter`` to trace to (e.g. an in-memory one in
        a test); without it, traces go to the settings' OTLP endpoint, or nowhere
        (:mod:`keel.telemetry`).

    >>> from keel import KeelPlugin, KeelSettings
    >>> plugin = KeelPlugin(KeelSettings(task_queue="support"), index=False)
    >>> plugin.name(), plugin.settings.task_queue
    ('keel.KeelPlugin', 'support')

    In a worker process::

        client = await Client.connect("127.0.0.1:7233", plugins=[KeelPlugin()])
        worker = Worker(client, task_queue="support", workflows=[TriageTicket])
        await worker.run()
    """

    def __init__(
        self,
        settings: KeelSettings | None = None,
        *,
        index: bool = True,
        providers: bool = True,
        max_concurrent_activities: int = 4,
        span_exporter=None,
    ) -> None:
        self.settings = settings or KeelSettings()
        self.index = index
        self.providers = providers
        self.max_concurrent_activities = max_concurrent_activities
        self._extra_queues: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        from keel._codec import Keys

        # The keys this process holds, and what it learned of which run is whose tenant.
        self.keys = Keys.from_settings(self.settings)
        self._tenant_scope = _TenantScope(self.keys)
        # Traces (Temporal's TracingInterceptor, outermost) and each step's keel.* span
        # attributes and latency metric (inside the tenant scope: it knows the tenant).
        telemetry.configure(self.settings)
        self.tracer_provider = telemetry.tracer_provider(self.settings, span_exporter)
        self._tracing = telemetry.tracing_interceptor(self.tracer_provider) if self.tracer_provider else None
        self._step_telemetry = telemetry.StepTelemetry()
        # What-if re-runs (keel whatif) reuse a recorded run's step results whose input is unchanged.
        from keel.workflows.evaluate import WhatIfInterceptor

        self._worker_interceptors = [self._tenant_scope, WhatIfInterceptor(), self._step_telemetry]
        super().__init__(
            "keel.KeelPlugin",
            data_converter=_data_converter(self.settings, self.keys),
            interceptors=[*([self._tracing] if self._tracing else []), *self._worker_interceptors],
            activities=keel_activities(),
            workflows=keel_workflows(),
            workflow_runner=_workflow_runner,
            # A Keel error raised in workflow code (an invalid request, a bad filter) fails the
            # run, typed and visible, instead of a workflow task that retries forever.
            workflow_failure_exception_types=[KeelError],
        )
        self.deployment = _deployment.Deployment(self.settings.task_queue, self.settings.index_task_queue)

    def executor(self) -> ThreadPoolExecutor:
        # CPU-bound activities on a 2-core box: a few threads, not dozens.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent_activities, thread_name_prefix="keel")
        return self._executor

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        if config.get("task_queue") in self._extra_queues:
            # One of the plugin's own extra workers, configured below; it needs the tenant scope
            # and the step telemetry (tracing comes with the client it was made from).
            config["interceptors"] = [*config.get("interceptors", []), *self._worker_interceptors]
            config["workflow_failure_exception_types"] = [*config.get("workflow_failure_exception_types", []), KeelError]
            return config
        config = super().configure_worker(config)
        _deployment.register(config["task_queue"], self.deployment)
        if config.get("activity_executor") is None:
            config["activity_executor"] = self.executor()
        return config

    async def run_worker(self, worker: Worker, next) -> None:
        if worker.task_queue in self._extra_queues:
            await next(worker)
            return
        from keel.activities._runtime import configure

        runtime = configure(self.settings)
        runtime.client = worker.client
        if runtime.keys is not None:
            runtime.keys.store  # a fresh deployment's worker makes the master key
        try:
            async with contextlib.AsyncExitStack() as stack:
                for extra in self._extra_workers(worker):
                    await stack.enter_async_context(extra)
                await next(worker)
        finally:
            runtime.close()  # the embedded index flushes and releases its lock
            if self.tracer_provider is not None:
                self.tracer_provider.force_flush(5000)

    def _extra_workers(self, worker: Worker) -> list[Worker]:
        from keel.activities.llm import LLM_REQUEST_ACTIVITIES

        s, client, extra = self.settings, worker.client, []

        def add(queue: str, **kwargs) -> None:
            if queue == worker.task_queue:
                return
            self._extra_queues.add(queue)
            _deployment.register(queue, self.deployment)
            extra.append(Worker(client, task_queue=queue, **kwargs))

        if s.task_queue != worker.task_queue:
            add(
                s.task_queue,
                workflows=keel_workflows(),
                activities=keel_activities(),
                activity_executor=self.executor(),
                workflow_runner=_workflow_runner(SandboxedWorkflowRunner()),
                max_concurrent_activities=self.max_concurrent_activities,
            )
        if self.providers:
            # One queue per provider: its slots bound concurrent requests per worker, and an
            # optional task-queue rate limit (enforced by the server) bounds the whole fleet.
            for p in s.provider_chain:
                add(
                    provider_task_queue(s.task_queue, p.name),
                    activities=LLM_REQUEST_ACTIVITIES,
                    max_concurrent_activities=p.max_concurrency,
                    max_task_queue_activities_per_second=p.requests_per_second,
                )
        if self.index:
            # The index owner's queue also runs Keel's workflows: a run started there (``keel
            # ask`` starts AnswerQuestion there) searches the index as a local activity.
            add(
                s.index_task_queue,
                workflows=keel_workflows(),
                activities=keel_activities(),
                activity_executor=self.executor(),
                workflow_runner=_workflow_runner(SandboxedWorkflowRunner()),
                max_concurrent_activities=2,
            )
        return extra

