"""Security end to end: nothing planted is in plaintext at rest or in any Temporal history,
a tenant's credential is what lets a caller act for it, and a forgotten tenant is gone."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError

from keel import tenants
from keel._codec import KeelCodec, Keys
from keel._converter import keel_data_converter
from keel.blobs import BlobStore
from keel.config import KeelSettings
from keel.errors import PermissionDenied
from keel.plugin import KeelPlugin
from keel.workflows import AnswerQuestion, IndexStats, IndexStatsInput, IngestCorpus

from .conftest import SHARED_DATA, KeelEnv, payloads_in

PLANTED_TYPES = {"CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "STREET_ADDRESS", "PERSON"}


def _pii_corpus(n: int = 40) -> tuple[list[str], set[str], list[str]]:
    """Texts with planted personal data, the planted values (10+ characters, so a match is not
    chance) and three full names to ask about."""
    data = json.loads((SHARED_DATA / "pii" / "synth_dev.json").read_text())
    long_values = lambda d: [s for s in d["spans"] if s["entity_type"] in PLANTED_TYPES and len(s["entity_value"]) >= 10]
    chosen = [d for d in data if long_values(d)][:n]
    values = {s["entity_value"] for d in chosen for s in long_values(d)}
    names = [s["entity_value"] for d in chosen for s in long_values(d) if s["entity_type"] == "PERSON" and " " in s["entity_value"]]
    return [d["full_text"] for d in chosen], values, names[:3]


async def _histories_since(client: Client, since: datetime) -> list:
    events = []
    async for execution in client.list_workflows(f"StartTime >= '{since.isoformat()}'"):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        events += [e async for e in handle.fetch_history_events()]
    return events


def _found(values: set[str], blobs: list[bytes]) -> set[str]:
    return {v for v in values if any(v.encode() in b for b in blobs)}


def _files(*roots: Path) -> list[bytes]:
    return [p.read_bytes() for root in roots for p in root.rglob("*") if p.is_file()]


async def test_no_planted_value_is_in_plaintext_at_rest_or_in_histories(keel: KeelEnv, fake_llm, temporal_settings, tmp_path):
    texts, planted, names = _pii_corpus()
    assert len(planted) >= 40 and len(names) == 3
    docs = tmp_path / "people"
    docs.mkdir()
    for i in range(4):
        (docs / f"notes-{i}.txt").write_text("\n\n".join(texts[i::4]))
    since = datetime.now(timezone.utc)

    summary = await keel.ingest([docs], tenant="scan")
    assert summary.indexed == 4, summary
    for name in names:
        await keel.ask(f"What do our notes say about {name}?", tenant="scan")

    # Raw bytes on disk: the data dir (blobs, index, cache, keys, logs) and the dev server's db.
    temporal_db = Path(temporal_settings.data_dir)
    at_rest = _files(keel.settings.data_dir, temporal_db)
    assert not _found(planted, at_rest), "planted values in plaintext at rest"
    # Every history of these runs, as stored: payloads base64-decoded (protobuf bytes), not decrypted.
    events = await _histories_since(keel.client, since)
    assert len(events) > 50
    assert not _found(planted, [e.SerializeToString() for e in events]), "planted values in a history"

    # Not vacuous: with the keys, the same histories show the questions, and the run's blobs open.
    codec = keel.client.data_converter.payload_codec
    opened = [p.data for e in events for p in await codec.decode(list(payloads_in(e)))]
    assert set(names) <= _found(planted, opened)
    blobs = BlobStore(keel.settings.blob_dir, Keys.from_settings(keel.settings))
    stored = [blobs.get(p.name, "scan") for p in (keel.settings.blob_dir / "scan").rglob("*") if p.is_file()]
    assert stored
    # The raw documents were discarded once indexed: no stored blob holds a document's bytes.
    raw = [p.read_bytes() for p in docs.iterdir()]
    assert not any(r in stored for r in raw)


# --- tenant authorization ----------------------------------------------------------------------


async def _caller(keel: KeelEnv, tmp_path: Path, tenant: str) -> Client:
    """A service holding only ``tenant``'s credential (no master key)."""
    tenants.create(keel.settings, tenant)
    ring = tenants.export_credential(keel.settings, tenant, tmp_path / f"{tenant}-keyring.json")
    s = KeelSettings(
        data_dir=tmp_path / f"{tenant}-caller", keyring=ring, temporal_address=keel.settings.temporal_address,
        task_queue=keel.settings.task_queue, index_task_queue=keel.settings.index_task_queue,
    )
    assert Keys.from_settings(s).store is None
    return await Client.connect(s.temporal_address, plugins=[KeelPlugin(s, index=False, providers=False)])


async def _attempt(keel: KeelEnv, client: Client, action: str, target: str, docs: Path, target_run: str):
    s = keel.settings
    if action == "ingest":
        return await client.execute_workflow(IngestCorpus.run, s.ingest_input(target, [str(docs)]), id=keel.workflow_id("x-ingest"), task_queue=s.task_queue)
    if action == "ask":
        return await client.execute_workflow(AnswerQuestion.run, s.ask_input(target, "When does the ferry leave?"), id=keel.workflow_id("x-ask"), task_queue=s.index_task_queue)
    if action == "stats":
        return await client.execute_workflow(IndexStats.run, IndexStatsInput(target), id=keel.workflow_id("x-stats"), task_queue=s.task_queue)
    if action == "read":  # the result of one of the target's runs
        return await client.get_workflow_handle(target_run).result()
    raise AssertionError(action)


async def test_a_tenant_credential_acts_for_that_tenant_only(keel: KeelEnv, fake_llm, tmp_path):
    names = ["auth-a", "auth-b", "auth-c"]
    docs = {}
    runs = {}
    for t in names:
        docs[t] = tmp_path / t
        docs[t].mkdir()
        (docs[t] / "ferry.md").write_text(f"# Ferry\n\nThe {t} ferry leaves the north jetty at 07:15 every day.")
        await keel.ingest([docs[t]], tenant=t)
        _, handle = await keel.ask("When does the ferry leave?", tenant=t)
        runs[t] = handle.id
    callers = {t: await _caller(keel, tmp_path, t) for t in names}

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cases = [(c, t, a) for c in names for t in names if c != t for a in ("ingest", "ask", "stats", "read")]
    cases = rng.sample(cases, 10) + [(t, t, a) for t in rng.sample(names, 2) for a in ("ask", "stats", "read")]
    for caller, target, action in cases:
        before = await keel.stats(target)
        if caller == target:
            assert await _attempt(keel, callers[caller], action, target, docs[target], runs[target]) is not None
        else:
            with pytest.raises(PermissionDenied):
                await _attempt(keel, callers[caller], action, target, docs[target], runs[target])
        assert await keel.stats(target) == before, (seed, caller, target, action)


class _Forger(KeelCodec):
    """A caller that seals everything with its own key, whatever tenant it names."""

    def _chosen_tenant(self, payload):
        return "forge-a", True


async def test_a_forged_request_is_refused_by_the_worker_before_any_step(keel: KeelEnv, fake_llm, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ferry.md").write_text("# Ferry\n\nThe ferry leaves the north jetty at 07:15.")
    await keel.ingest([tmp_path / "b"], tenant="forge-b")
    before = await keel.stats("forge-b")
    tenants.create(keel.settings, "forge-a")
    ring = tenants.export_credential(keel.settings, "forge-a", tmp_path / "a-keyring.json")
    keys = Keys(keys_dir=tmp_path / "none", master_key_file=tmp_path / "none.key", keyring=ring, auto_create=False)
    forger = await Client.connect(
        keel.settings.temporal_address, data_converter=dataclasses.replace(keel_data_converter, payload_codec=_Forger(keys))
    )
    s = keel.settings
    for run in (
        forger.execute_workflow(IngestCorpus.run, s.ingest_input("forge-b", [str(tmp_path / "b")]), id=keel.workflow_id("forged"), task_queue=s.task_queue),
        forger.execute_workflow(AnswerQuestion.run, s.ask_input("forge-b", "When does the ferry leave?"), id=keel.workflow_id("forged"), task_queue=s.index_task_queue),
    ):
        with pytest.raises(WorkflowFailureError) as failed:
            await run
        assert failed.value.cause.type == "PermissionDenied", failed.value.cause
    assert await keel.stats("forge-b") == before



async def test_signals_and_queries_of_another_tenants_run_are_refused(keel: KeelEnv, tmp_path):
    from temporalio.client import WorkflowQueryFailedError

    from keel.llm.providers import tenant_budget_id
    from keel.llm.types import Charge, PeriodSpend, TenantBudgetInput

    ledger = await keel.client.start_workflow(
        "TenantBudget", TenantBudgetInput(tenant="ledger-b"), id=tenant_budget_id(keel.settings.task_queue, "ledger-b"),
        task_queue=keel.settings.task_queue,
    )
    assert await ledger.query("spend", "2026-11", result_type=PeriodSpend) == PeriodSpend()
    other = (await _caller(keel, tmp_path, "ledger-a")).get_workflow_handle(ledger.id)

    await other.signal("charge", Charge("2026-11", 99.0, 1, 1, "default"))  # sealed with ledger-a's key
    with pytest.raises(WorkflowQueryFailedError):  # its reason is sealed: the caller learns nothing
        await other.query("spend", "2026-11", result_type=PeriodSpend)
    # The worker dropped the signal: the ledger holds nothing; its own tenant's charge counts.
    await (await _caller(keel, tmp_path, "ledger-b")).get_workflow_handle(ledger.id).signal("charge", Charge("2026-11", 1.0, 1, 1, "default"))
    assert (await ledger.query("spend", "2026-11", result_type=PeriodSpend)).attempts == 1
    await ledger.terminate()


# --- erasure -------------------------------------------------------------------------------------


def _cli(keel: KeelEnv, *args: str) -> subprocess.CompletedProcess:
    s = keel.settings
    env = {
        **os.environ, "KEEL_DATA_DIR": str(s.data_dir), "KEEL_TEMPORAL_ADDRESS": s.temporal_address,
        "KEEL_TASK_QUEUE": s.task_queue, "KEEL_INDEX_TASK_QUEUE": s.index_task_queue,
    }
    return subprocess.run([sys.executable, "-m", "keel.cli", *args], env=env, capture_output=True, text=True, timeout=300)


async def test_keel_tenant_forget_erases_one_tenant(keel: KeelEnv, fake_llm, tmp_path):
    for t in ("erase-me", "erase-keep"):
        (tmp_path / t).mkdir()
        (tmp_path / t / "ferry.md").write_text(f"# Ferry\n\nThe {t} ferry leaves the north jetty at 07:15.")
        await keel.ingest([tmp_path / t], tenant=t)
    _, run = await keel.ask("When does the ferry leave?", tenant="erase-me")
    assert (keel.settings.blob_dir / "erase-me").exists()
    kept_before = await keel.stats("erase-keep")

    done = _cli(keel, "tenant", "forget", "erase-me", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["index_points"] > 0 and report["blobs"] > 0 and report["key_destroyed"], report

    assert not (keel.settings.blob_dir / "erase-me").exists()
    assert not Keys.from_settings(keel.settings).require_store().exists("erase-me")
    with pytest.raises(PermissionDenied):  # its histories are unreadable now, even for an admin
        await keel.client.get_workflow_handle(run.id).result()
    stats = await keel.stats("erase-me")
    assert (stats.documents, stats.chunks) == (0, 0)
    # The other tenant is untouched and still answers.
    assert await keel.stats("erase-keep") == kept_before
    answer, _ = await keel.ask("When does the ferry leave?", tenant="erase-keep")
    assert answer.citations


async def test_upload_document_ingests_bytes_from_a_service_with_only_its_credential(keel: KeelEnv, fake_llm, tmp_path):
    import keel as keel_api

    keel_api_client = await _caller(keel, tmp_path, "uploader")
    out = await keel_api.upload_document(
        keel_api_client, "uploader", "tides.md", b"# Tides\n\nHigh tide at the harbour is at 14:20 today.",
        settings=keel.settings,
    )
    assert out.chunks >= 1
    assert (await keel.stats("uploader")).documents == 1
    with pytest.raises(PermissionDenied):
        await keel_api.upload_document(keel_api_client, "someone-else", "x.md", b"# X\n\nx", settings=keel.settings)
