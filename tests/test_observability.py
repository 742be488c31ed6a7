"""Traces, metrics, dashboards and alerts (keel/telemetry.py, infra/observability/).

* an LLM call in a workflow, on an in-process worker tracing to an in-memory exporter: the span
  tree, Keel's attributes, no prompt text; and Keel's metrics on the worker's Prometheus endpoint;
* ``keel up``'s worker process (the ``Stack``) tracing over OTLP/HTTP to a loopback collector
  and scraped by a real ``prometheus``: an ingest and an ask, their span trees without any
  document or question text, and the token counter rising in Prometheus;
* the alert rules through ``promtool`` (check and unit tests) and the dashboard's metric names.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pydantic import BaseModel
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin, LLMCache, llm, telemetry
from keel.testing._env import free_port, isolated_settings
from tests.conftest import ROOT

OBS = ROOT / "infra" / "observability"
SECRET_PROMPT = "Ticket 7731: my aubergine-coloured invoice from Quillfeather Ltd was charged twice"
DOC_TEXT = (
    "The Marmalade Lighthouse keepers polish the brass Fresnel lens every Thursday at dawn. "
    "Visitors may climb the Marmalade tower on Saturdays between nine and noon."
)
DOC_PHRASES = ["Marmalade", "polish the brass", "Thursday at dawn", "between nine and noon"]
QUESTION = "When do the Marmalade keepers polish the brass lens?"


class Triage(BaseModel):
    category: str


@workflow.defn(sandboxed=False)
class TracedTriage:
    @workflow.run
    async def run(self, text: str) -> str:
        out = await llm.complete(text, Triage, tenant="tracer", cache=LLMCache(semantic=False))
        return out.value.category if out.ok else out.reason


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def test_llm_call_span_tree_and_metrics(tmp_path, temporal_settings, fake_llm):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from keel._codec import ensure_local_keys

    exporter = InMemorySpanExporter()
    settings = isolated_settings(temporal_settings.temporal_address, fake_llm, tmp_path, cache_enabled=True)
    ensure_local_keys(settings)
    plugin = KeelPlugin(settings, index=False, span_exporter=exporter)
    port = free_port()
    client = await Client.connect(
        settings.temporal_address, plugins=[plugin], runtime=telemetry.prometheus_runtime(f"127.0.0.1:{port}")
    )
    queue = f"traced-{uuid.uuid4().hex[:6]}"
    try:
        async with Worker(client, task_queue=queue, workflows=[TracedTriage]):
            out = await client.execute_workflow(TracedTriage.run, SECRET_PROMPT, id=f"traced-{uuid.uuid4().hex[:8]}", task_queue=queue)
    finally:
        from keel.activities._runtime import runtime

        runtime().close()
    assert out and "charged" not in out

    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    ids = {s.context.span_id: s for s in spans}
    run = by_name["RunActivity:keel.llm_request"]
    chain = [run.name]
    s = run
    while s.parent is not None and s.parent.span_id in ids:
        s = ids[s.parent.span_id]
        chain.append(s.name)
    # Temporal's TracingInterceptor: a run's spans (RunWorkflow, StartActivity, CompleteWorkflow)
    # hang off the span that started it (here the client's StartWorkflow), each activity's
    # RunActivity off its StartActivity.
    assert chain == ["RunActivity:keel.llm_request", "StartActivity:keel.llm_request", "StartWorkflow:TracedTriage"]
    assert ids[by_name["RunWorkflow:TracedTriage"].parent.span_id].name == "StartWorkflow:TracedTriage"
    assert len({x.context.trace_id for x in spans}) == 1  # one trace, from the client's start
    a = run.attributes
    assert a["keel.tenant"] == "tracer" and a["keel.step"] == "keel.llm_request" and a["keel.outcome"] == "ok"
    assert a["keel.provider"] == "fake" and a["keel.model"] and a["keel.tokens"] > 0 and "keel.cost_usd" in a
    prepare = by_name["RunActivity:keel.llm_prepare"]
    assert prepare.attributes["keel.cache"] == "miss" and prepare.attributes["keel.tenant"] == "tracer"
    assert ids[prepare.parent.span_id].name == "StartActivity:keel.llm_prepare"
    dumped = json.dumps([json.loads(x.to_json()) for x in spans])
    for word in ("aubergine", "Quillfeather", "7731"):
        assert word not in dumped

    text = scrape(f"http://127.0.0.1:{port}/metrics")
    tokens = dict(tenant="tracer", provider="fake")
    assert sample(text, "keel_llm_tokens_total", kind="prompt", **tokens) > 0
    assert sample(text, "keel_llm_tokens_total", kind="completion", **tokens) > 0
    assert sample(text, "keel_llm_requests_total", outcome="replied", **tokens) == 1
    assert sample(text, "keel_llm_cost_usd_count", **tokens) == 1
    assert sample(text, "keel_llm_cache_lookups_total", tenant="tracer", result="miss") == 1
    assert sample(text, "keel_step_duration_seconds_count", step="keel.llm_request", outcome="ok") == 1
    assert sample(text, "keel_breaker_open", provider="fake") == 0
    # The SDK's own metrics on the same endpoint (the dashboard's Temporal panels use these).
    for name in ("temporal_activity_schedule_to_start_latency_bucket", "temporal_workflow_completed_total"):
        assert name in text, name


# --- keel up's worker: OTLP to a loopback collector, scraped by a real Prometheus ---------


class Collector:
    """A loopback OTLP/HTTP traces receiver: keeps each request's raw bytes and its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.bodies: list[bytes] = []
        self.spans: list[dict] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.add(ExportTraceServiceRequest.FromString(body), body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request, body: bytes) -> None:
        self.bodies.append(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {}
                    for kv in s.attributes:
                        v = kv.value
                        attrs[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
                    self.spans.append(dict(name=s.name, id=s.span_id, parent=s.parent_span_id, trace=s.trace_id, attrs=attrs))

    def chain(self, span: dict) -> list[str]:
        ids = {s["id"]: s for s in self.spans}
        names = [span["name"]]
        while span["parent"] in ids:
            span = ids[span["parent"]]
            names.append(span["name"])
        return names

    def find(self, name: str, **attrs) -> list[dict]:
        return [s for s in self.spans if s["name"] == name and all(s["attrs"].get(k) == v for k, v in attrs.items())]


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: apt-get install -y prometheus"
        self.port = free_port()
        config = tmp / "prometheus.yml"
        shutil.copy(OBS / "alerts.yml", tmp / "alerts.yml")  # the real server loads the rules too
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            f"scrape_configs:\n  - job_name: keel\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-2000:]
            try:
                if urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not get ready")

    def query(self, expr: str) -> float | None:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        data = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert data["status"] == "success", data
        result = data["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> bool:
        data = json.loads(urllib.request.urlopen(self.url + "/api/v1/targets", timeout=5).read())
        return any(t["health"] == "up" for t in data["data"]["activeTargets"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def test_worker_traces_and_prometheus_scrape(tmp_path, temporal_settings, fake_llm, monkeypatch):
    from tests.conftest import start_env

    collector = Collector()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the worker's and this client's batches
    env = await start_env(
        tmp_path / "keel", temporal_settings, f"obs{uuid.uuid4().hex[:4]}",
        llm_base_url=fake_llm.base_url, llm_start_local=False, llm_timeout_seconds=5,
        metrics_port=free_port(), otel_exporter_otlp_endpoint=collector.url,
    )
    prometheus = None
    try:
        status = env.stack.status()
        assert status["metrics_url"] and status["metrics_urls"] == [status["metrics_url"]]
        # `keel status --json` names the same endpoint.
        cli = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "keel"), "status", "--json"], capture_output=True, text=True, timeout=60,
            env={**__import__("os").environ, "KEEL_DATA_DIR": str(env.settings.data_dir)},
        )
        assert json.loads(cli.stdout)["metrics_url"] == status["metrics_url"], cli.stderr[-500:]
        target = urllib.parse.urlparse(status["metrics_url"]).netloc
        await eventually(lambda: _serves(status["metrics_url"]), 60, "the worker's metrics endpoint")
        (tmp_path / "prom").mkdir()
        prometheus = Prometheus(tmp_path / "prom", target)
        prometheus.wait_ready()
        await eventually(prometheus.targets_up, 20, "prometheus to scrape the worker")

        doc = tmp_path / "docs" / "marmalade.txt"
        doc.parent.mkdir()
        doc.write_text(DOC_TEXT)
        summary = await env.ingest([doc], tenant="obs")
        assert summary.indexed == 1, summary
        before = prometheus.query('sum(keel_llm_tokens_total{tenant="obs"})') or 0.0
        result, _ = await env.ask(QUESTION, tenant="obs")
        assert result.provider and not result.degraded, result
        after = await eventually(
            lambda: (v := prometheus.query('sum(keel_llm_tokens_total{tenant="obs"})')) and v > before and v, 20,
            "the token counter in Prometheus",
        )
        assert after > before
        assert prometheus.query('sum(keel_documents_ingested_total{tenant="obs"})') == 1
        assert prometheus.query('sum(keel_retrieval_duration_seconds_count{tenant="obs"})') >= 1
        assert prometheus.query('histogram_quantile(0.95, sum by (le) (rate(keel_step_duration_seconds_bucket[1m])))') is not None

        # Traces: the worker's spans over OTLP, parented to this client's start spans.
        for plugin in env.client.config()["plugins"]:
            if isinstance(plugin, KeelPlugin) and plugin.tracer_provider is not None:
                plugin.tracer_provider.force_flush(5000)
        await eventually(lambda: collector.find("RunActivity:keel.llm_request"), 20, "the ask's request span")
        await eventually(lambda: collector.find("RunActivity:keel.index_document"), 20, "the ingest's index span")
        [request] = collector.find("RunActivity:keel.llm_request")
        assert collector.chain(request) == [
            "RunActivity:keel.llm_request", "StartActivity:keel.llm_request", "StartWorkflow:AnswerQuestion",
        ], collector.chain(request)
        [run] = collector.find("RunWorkflow:AnswerQuestion")
        assert collector.chain(run) == ["RunWorkflow:AnswerQuestion", "StartWorkflow:AnswerQuestion"]
        a = request["attrs"]
        assert a["keel.tenant"] == "obs" and a["keel.step"] == "keel.llm_request" and a["keel.tokens"] > 0
        assert a["keel.model"] and a["keel.provider"] == "default" and a["keel.outcome"] == "ok"
        [search] = collector.find("RunActivity:keel.hybrid_search")
        assert search["attrs"]["keel.tenant"] == "obs" and collector.chain(search)[-1] == "StartWorkflow:AnswerQuestion"
        [index] = collector.find("RunActivity:keel.index_document")
        assert collector.chain(index) == [
            "RunActivity:keel.index_document", "StartActivity:keel.index_document",
            "StartChildWorkflow:IngestDocument", "StartWorkflow:IngestCorpus",
        ], collector.chain(index)
        [child] = collector.find("RunWorkflow:IngestDocument")
        assert collector.chain(child) == ["RunWorkflow:IngestDocument", "StartChildWorkflow:IngestDocument", "StartWorkflow:IngestCorpus"]
        assert index["attrs"]["keel.tenant"] == "obs"
        for step in ("keel.partition", "keel.scrub_elements", "keel.chunk", "keel.embed"):
            [span] = [s for s in collector.spans if s["name"] == f"RunActivity:{step}"] or [None]
            assert span is not None, step
            assert span["attrs"]["keel.step"] == step and "StartChildWorkflow:IngestDocument" in collector.chain(span)
        # No document or question text anywhere in what was exported (names, attributes, events).
        raw = b"".join(collector.bodies)
        for phrase in [*DOC_PHRASES, QUESTION, "keepers polish"]:
            assert phrase.encode() not in raw, phrase
    finally:
        if prometheus is not None:
            prometheus.stop()
        env.stack.down(say=lambda _: None)


def _serves(url: str) -> bool:
    try:
        return "temporal_" in scrape(url)
    except OSError:
        return False


# --- alert rules and dashboard -------------------------------------------------------------


def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install -y prometheus (make test installs it)"
    return binary


def test_alert_rules_check_and_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", str(OBS / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=OBS, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr


METRIC_NAME = re.compile(r"\b((?:keel|temporal)_[a-z0-9_]+)\b")


def test_dashboard_and_rules_use_only_defined_metrics():
    import yaml

    defined = telemetry.exposed_names()
    dashboard = json.loads((OBS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    rules = yaml.safe_load((OBS / "alerts.yml").read_text())
    exprs_rules = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = {n for e in exprs + exprs_rules for n in METRIC_NAME.findall(e)}
    used = {n for n in names if n.startswith("keel_")}
    assert used and used <= defined, used - defined
    assert names - used <= set(telemetry.TEMPORAL_METRICS), names - used - set(telemetry.TEMPORAL_METRICS)
    # Every Keel metric is on the dashboard.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    for name in telemetry.COUNTERS:
        assert f"{name}_total" in used, name
    for name in (*telemetry.HISTOGRAMS, *telemetry.GAUGES):
        assert name in families, name
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("p95", "error rate", "tokens", "cost", "cache hit", "breaker", "budget", "ingest", "retrieval"):
        assert word in titles, word
