"""Traces and metrics of a Keel deployment (README "Configuration and production").

**Traces** use Temporal's own OpenTelemetry support
(:class:`temporalio.contrib.opentelemetry.TracingInterceptor`): a span per workflow, per
activity start and per activity run, propagated through Temporal headers, so an ask is one
trace from the client's ``StartWorkflow`` to each ``RunActivity:keel.*``. Keel adds its own
attributes to each activity span: ``keel.tenant``, ``keel.step``, ``keel.outcome`` (and
``keel.error_type``), and where known ``keel.model``, ``keel.provider``, ``keel.tokens``,
``keel.cost_usd``, ``keel.cache``, ``keel.hits``. Spans never hold payloads: no document,
chunk, question or answer text. Tracing is off unless an OTLP endpoint is configured
(``KEEL_OTEL_EXPORTER_OTLP_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: OTLP over HTTP/protobuf) or an exporter is given
(``KeelPlugin(span_exporter=...)``, e.g. an in-memory one in a test).

**Metrics** go through Temporal's runtime: one Prometheus endpoint per worker process
(``KEEL_METRICS_PORT``, ``keel status --json`` names it) serves the SDK's own ``temporal_*``
metrics and Keel's, recorded with ``activity.metric_meter()`` in activities and the replay-safe
``workflow.metric_meter()`` in workflows. Keel's metric names are the constants below
(``METRICS``); ``infra/observability`` holds a Grafana dashboard and Prometheus alert rules
written against exactly these names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

# --- metric names (as exposed to Prometheus: counters get ``_total``) --------------------

LLM_TOKENS = "keel_llm_tokens"  # counter: tenant, provider, model, kind=prompt|completion
LLM_REQUESTS = "keel_llm_requests"  # counter: tenant, provider, model, outcome=replied|failed|rejected
LLM_COST = "keel_llm_cost_usd"  # histogram of the cost of each attempt (USD); _sum is the spend
STEP_DURATION = "keel_step_duration_seconds"  # histogram: step, outcome=ok|error (every activity)
CACHE_LOOKUPS = "keel_llm_cache_lookups"  # counter: tenant, result=exact|semantic|miss
BREAKER_OPEN = "keel_breaker_open"  # gauge 1/0: provider
BREAKER_OPENED = "keel_breaker_opened"  # counter: provider (a closed circuit opened)
BUDGET_SPENT = "keel_budget_spent_usd"  # gauge: tenant (spend this period)
BUDGET_LIMIT = "keel_budget_limit_usd"  # gauge: tenant (the period's budget)
DOCUMENTS_INGESTED = "keel_documents_ingested"  # counter: tenant
DOCUMENTS_FAILED = "keel_documents_failed"  # counter: tenant, error_type
RETRIEVAL_DURATION = "keel_retrieval_duration_seconds"  # histogram: tenant (hybrid search)

COUNTERS = (LLM_TOKENS, LLM_REQUESTS, CACHE_LOOKUPS, BREAKER_OPENED, DOCUMENTS_INGESTED, DOCUMENTS_FAILED)
HISTOGRAMS = (LLM_COST, STEP_DURATION, RETRIEVAL_DURATION)
GAUGES = (BREAKER_OPEN, BUDGET_SPENT, BUDGET_LIMIT)


# Temporal SDK metrics (same endpoint) that infra/observability uses.
TEMPORAL_METRICS = (
    "temporal_activity_schedule_to_start_latency_bucket",
    "temporal_workflow_task_execution_failed_total",
    "temporal_activity_execution_failed_total",
)


def exposed_names() -> set[str]:
    """Every series name Keel's own metrics appear under on the Prometheus endpoint.

    >>> sorted(n for n in exposed_names() if n.startswith("keel_llm_tokens"))
    ['keel_llm_tokens_total']
    """
    names = {f"{c}_total" for c in COUNTERS} | set(GAUGES)
    for h in HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
USD_BUCKETS = [0.00001, 0.0001, 0.001, 0.01, 0.1, 1, 10]

ALL_TENANTS = "_all"
_tenant_labels = True  # KeelPlugin sets it from settings.metrics_tenant_labels


def configure(settings) -> None:
    """This process's label policy (``metrics_tenant_labels``); ``KeelPlugin`` calls it."""
    global _tenant_labels
    _tenant_labels = bool(getattr(settings, "metrics_tenant_labels", True))


def tenant_label(tenant: str | None) -> str:
    """The ``tenant`` label: the tenant, or ``_all`` when ``metrics_tenant_labels`` is off
    (a deployment with many tenants bounds its series that way)."""
    if not _tenant_labels:
        return ALL_TENANTS
    return tenant or "_none"


# --- the Prometheus endpoint -------------------------------------------------------------


def prometheus_runtime(bind_address: str):
    """A Temporal ``Runtime`` serving ``/metrics`` on ``bind_address`` (``host:port``): the SDK's
    metrics and Keel's. Pass it to ``Client.connect(..., runtime=...)``; raises ``ValueError``
    when the address is taken."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    buckets = {name: SECONDS_BUCKETS for name in (STEP_DURATION, RETRIEVAL_DURATION)}
    buckets[LLM_COST] = USD_BUCKETS
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                counters_total_suffix=True,
                durations_as_seconds=True,
                histogram_bucket_overrides=buckets,
            )
        )
    )


# --- recording ---------------------------------------------------------------------------


def _meter():
    """The current workflow's (replay-safe) or activity's metric meter; None elsewhere."""
    from temporalio import activity, workflow

    try:
        if workflow.in_workflow():
            return workflow.metric_meter()
        if activity.in_activity():
            return activity.metric_meter()
    except Exception:  # noqa: BLE001 - metrics never fail a step
        return None
    return None


def _labels(labels: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    return {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in labels.items() if v is not None}


def count(name: str, value: int = 1, *, description: str = "", unit: str = "", **labels: Any) -> None:
    meter = _meter()
    if meter is not None and value > 0:
        meter.create_counter(name, description, unit).add(int(value), _labels(labels))


def observe(name: str, value: float, *, description: str = "", unit: str = "", **labels: Any) -> None:
    meter = _meter()
    if meter is not None:
        meter.create_histogram_float(name, description, unit).record(float(value), _labels(labels))


def gauge(name: str, value: float, *, description: str = "", unit: str = "", **labels: Any) -> None:
    meter = _meter()
    if meter is not None:
        meter.create_gauge_float(name, description, unit).set(float(value), _labels(labels))


def llm_attempt(tenant: str, record) -> None:
    """One LLM attempt (a ``ProviderAttempt``): tokens, outcome and cost, and its span's attributes."""
    t = tenant_label(tenant)
    common = dict(tenant=t, provider=record.provider, model=record.model)
    count(LLM_TOKENS, record.usage.prompt_tokens, description="LLM tokens", kind="prompt", **common)
    count(LLM_TOKENS, record.usage.completion_tokens, description="LLM tokens", kind="completion", **common)
    outcome = getattr(record.outcome, "value", record.outcome)
    count(LLM_REQUESTS, 1, description="LLM request attempts", outcome=outcome, **common)
    observe(LLM_COST, record.cost_usd, description="cost of one LLM attempt in USD", **common)
    annotate(
        model=record.model, provider=record.provider, tokens=record.usage.prompt_tokens + record.usage.completion_tokens,
        prompt_tokens=record.usage.prompt_tokens, completion_tokens=record.usage.completion_tokens,
        cost_usd=float(record.cost_usd), llm_outcome=outcome, error_type=record.error_type,
    )


def cache_lookup(tenant: str, result: str) -> None:
    count(CACHE_LOOKUPS, 1, description="answer cache lookups", tenant=tenant_label(tenant), result=result)
    annotate(cache=result)


def breaker_state(provider: str, open_: bool) -> None:
    gauge(BREAKER_OPEN, 1.0 if open_ else 0.0, description="1 while the provider's circuit is open", provider=provider)


def breaker_opened(provider: str) -> None:
    count(BREAKER_OPENED, 1, description="a provider's circuit opened", provider=provider)


def budget(tenant: str, spent_usd: float, limit_usd: float | None = None) -> None:
    t = tenant_label(tenant)
    gauge(BUDGET_SPENT, spent_usd, description="tenant LLM spend this budget period (USD)", tenant=t)
    if limit_usd is not None:
        gauge(BUDGET_LIMIT, limit_usd, description="tenant LLM budget per period (USD)", tenant=t)


def document_ingested(tenant: str) -> None:
    count(DOCUMENTS_INGESTED, 1, description="documents indexed", tenant=tenant_label(tenant))


def document_failed(tenant: str, error_type: str) -> None:
    count(DOCUMENTS_FAILED, 1, description="documents that failed to ingest", tenant=tenant_label(tenant), error_type=error_type or "unknown")


def retrieval(tenant: str, seconds: float, hits: int) -> None:
    observe(RETRIEVAL_DURATION, seconds, description="hybrid search latency", unit="s", tenant=tenant_label(tenant))
    annotate(hits=hits)


# --- traces ------------------------------------------------------------------------------


def annotate(**attributes: Any) -> None:
    """Set ``keel.<name>`` attributes on the current span (a no-op when tracing is off).
    Only ids, names and numbers belong here: never a payload's text."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes({f"keel.{k}": v for k, v in _labels(attributes).items()})


def otlp_endpoint(settings) -> str | None:
    """The OTLP/HTTP traces endpoint from the settings or the standard environment."""
    import os

    base = getattr(settings, "otel_exporter_otlp_endpoint", None)
    if base:
        base = base.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def tracer_provider(settings, exporter=None):
    """A TracerProvider exporting to ``exporter`` (synchronously: a test sees every span at
    once) or to the configured OTLP endpoint (batched); None when tracing is off."""
    endpoint = None if exporter is not None else otlp_endpoint(settings)
    if exporter is None and endpoint is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = getattr(settings, "otel_service_name", None) or "keel"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def tracing_interceptor(provider):
    """Temporal's tracing interceptor on ``provider``. Workflow spans are made for every run,
    also those started without a traced client (the CLI, a schedule)."""
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(provider.get_tracer("keel"), always_create_workflow_spans=True)


class StepTelemetry(Interceptor):
    """Per activity (a step): the ``keel.*`` attributes of its span and its latency histogram.
    Runs inside the tenant scope, so it knows the run's tenant."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StepTelemetryActivity(next)


class _StepTelemetryActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput):
        from temporalio import activity

        from keel._codec import current_tenant

        step = activity.info().activity_type
        tenant = current_tenant()
        annotate(step=step, tenant=tenant or None, attempt=activity.info().attempt)
        start = time.monotonic()
        outcome = "ok"
        try:
            return await self.next.execute_activity(input)
        except BaseException as e:
            outcome = "error"
            error_type = getattr(e, "type", None) or type(e).__name__
            annotate(outcome=outcome, error_type=error_type)
            raise
        finally:
            if outcome == "ok":
                annotate(outcome=outcome)
            observe(STEP_DURATION, time.monotonic() - start, description="step (activity) latency", unit="s", step=step, outcome=outcome)
