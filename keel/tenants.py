"""Tenants: their keys, their callers' credentials, and their erasure (``keel tenant ...``).

Administrative operations: they need the key store (the master key), which workers and
administrators hold and services acting for one tenant do not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from keel._codec import Keys
from keel.config import KeelSettings
from keel.keys import Keyring, check_tenant


def _keys(settings: KeelSettings) -> Keys:
    return Keys.from_settings(settings, create_master=True)


def _grant(keys: Keys, keyring: Keyring, tenant: str) -> None:
    store = keys.require_store()
    for version in range(1, store.key(tenant).version + 1):
        keyring.add(tenant, version, store.key(tenant, version).key("payload"))


def create(settings: KeelSettings, tenant: str) -> bool:
    """Create ``tenant``'s key and put its credential in this caller's keyring; ``False`` if
    the tenant existed (its key is kept)."""
    keys = _keys(settings)
    created = keys.require_store().create(check_tenant(tenant))
    _grant(keys, keys.keyring, tenant)
    return created


def rotate(settings: KeelSettings, tenant: str) -> int:
    """A new key version for ``tenant`` (new data is sealed with it, old data stays readable)."""
    keys = _keys(settings)
    version = keys.require_store().rotate(tenant)
    _grant(keys, keys.keyring, tenant)
    return version


def rotate_master(settings: KeelSettings) -> int:
    """A new master key in the embedded default's key file; every tenant's data key is re-wrapped
    with it (data itself is not re-encrypted). Returns how many data keys were re-wrapped."""
    import base64
    import secrets

    from keel.keys import KeyStore, LocalKeyProvider, _write_private

    path = settings.master_key_path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no master key file (a KMS or KEEL_MASTER_KEY rotates on its own side)")
    doc = json.loads(path.read_text())
    new_id = f"m{len(doc['keys']) + 1}"
    doc["keys"][new_id] = base64.b64encode(secrets.token_bytes(32)).decode()
    doc["current"] = new_id
    provider = LocalKeyProvider({k: base64.b64decode(v) for k, v in doc["keys"].items()}, new_id)
    n = KeyStore(settings.keys_dir, provider).rewrap()
    _write_private(path, json.dumps(doc))
    return n


def export_credential(settings: KeelSettings, tenant: str, path: Path) -> Path:
    """Write a keyring file holding only ``tenant``'s credential, for a service acting for it
    (``KEEL_KEYRING=path``; that service needs no master key)."""
    keys = _keys(settings)
    _grant(keys, Keyring(path), tenant)
    return path


def tenants(settings: KeelSettings) -> list[str]:
    return [t for t in _keys(settings).require_store().tenants() if not t.startswith("_")]


@dataclass
class Forgotten:
    tenant: str
    runs_terminated: list[str] = field(default_factory=list)
    index_points: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    cache_entries: int = 0
    budget_state: bool = False
    key_destroyed: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))


async def _open_runs_of(client, tenant: str) -> list[str]:
    """Open runs whose start input was sealed with the tenant's key (the key id is in clear)."""
    found = []
    async for execution in client.list_workflows("ExecutionStatus = 'Running'"):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            attrs = event.workflow_execution_started_event_attributes
            payloads = attrs.input.payloads if attrs and attrs.input else []
            if any(p.metadata.get("keel-key", b"").decode().rpartition(":")[0] == tenant for p in payloads):
                found.append(execution.id)
            break
    return found


async def forget(settings: KeelSettings, client, tenant: str) -> Forgotten:
    """Erase ``tenant``: stop its open runs, delete its index points, blobs, cache entries and
    budget state, then destroy its key, so its Temporal histories become unreadable."""
    from keel.activities.index import EraseTenantInput
    from keel.workflows.erase import EraseTenant

    check_tenant(tenant)
    keys = _keys(settings)
    store = keys.require_store()
    out = Forgotten(tenant)
    # The budget ledger is one of the open runs: its state goes with its history.
    for workflow_id in await _open_runs_of(client, tenant):
        await client.get_workflow_handle(workflow_id).terminate(reason=f"tenant {tenant} forgotten")
        out.runs_terminated.append(workflow_id)
        out.budget_state = out.budget_state or "-budget-" in workflow_id
    if store.exists(tenant):
        erased = await client.execute_workflow(
            EraseTenant.run, EraseTenantInput(tenant), id=f"keel-erase-{tenant}", task_queue=settings.index_task_queue,
            id_conflict_policy=_use_existing(),
        )
        out.index_points, out.blobs, out.blob_bytes, out.cache_entries = (
            erased.index_points, erased.blobs, erased.blob_bytes, erased.cache_entries,
        )
        store.destroy(tenant)
        out.key_destroyed = True
    keys.keyring.remove(tenant)
    return out


def _use_existing():
    from temporalio.common import WorkflowIDConflictPolicy

    return WorkflowIDConflictPolicy.USE_EXISTING
