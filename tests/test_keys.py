"""Tenant keys without Temporal: sealing, rotation, credentials, another process's changes."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.api.common.v1 import Payload

from keel import tenants
from keel._codec import ENCRYPTED, KeelCodec, Keys
from keel.config import KeelSettings
from keel.errors import PermissionDenied
from keel.keys import seal, unseal


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


@pytest.fixture
def settings(tmp_path) -> KeelSettings:
    return KeelSettings(data_dir=tmp_path / "keel")


def _admin(settings: KeelSettings) -> Keys:
    return Keys.from_settings(settings, create_master=True)


def test_sealed_payloads_name_their_key_and_survive_rotation(settings):
    tenants.create(settings, "acme")
    codec = KeelCodec(_admin(settings))
    [old] = asyncio.run(codec.encode([_payload('{"tenant": "acme", "q": "Jane Roe"}')]))
    assert old.metadata["encoding"] == ENCRYPTED and old.metadata["keel-key"] == b"acme:1" and b"Jane" not in old.data
    assert tenants.rotate(settings, "acme") == 2
    [new] = asyncio.run(codec.encode([_payload('{"tenant": "acme"}')]))
    assert new.metadata["keel-key"] == b"acme:2"
    opened = asyncio.run(codec.decode([old, new]))
    assert opened[0].data == b'{"tenant": "acme", "q": "Jane Roe"}' and opened[1].metadata["keel-tenant"] == b"acme"


def test_master_key_rotation_rewraps_without_losing_data(settings):
    tenants.create(settings, "acme")
    sealed = seal(_admin(settings), "acme", "blob", b"kept")
    assert tenants.rotate_master(settings) == 1
    assert unseal(_admin(settings), "acme", "blob", sealed) == b"kept"


def test_a_credential_opens_its_tenant_only(settings, tmp_path):
    tenants.create(settings, "acme")
    tenants.create(settings, "globex")
    admin = KeelCodec(_admin(settings))
    sealed = asyncio.run(admin.encode([_payload('{"tenant": "acme"}'), _payload('{"tenant": "globex"}')]))
    ring = tenants.export_credential(settings, "acme", tmp_path / "acme.json")
    caller = KeelCodec(Keys(keys_dir=tmp_path / "none", master_key_file=tmp_path / "none.key", keyring=ring, auto_create=False))
    assert asyncio.run(caller.decode(sealed[:1]))[0].data == b'{"tenant": "acme"}'
    with pytest.raises(PermissionDenied):
        asyncio.run(caller.decode(sealed[1:]))
    with pytest.raises(PermissionDenied):  # cannot even seal for another tenant
        asyncio.run(caller.encode([_payload('{"tenant": "globex"}')]))
    # What it seals without naming a tenant is its own tenant's.
    assert asyncio.run(caller.encode([_payload("[1, 2]")]))[0].metadata["keel-key"] == b"acme:1"


def test_a_worker_turns_unauthentic_payloads_into_denials(settings):
    tenants.create(settings, "acme")
    worker = KeelCodec(_admin(settings))
    [sealed] = asyncio.run(worker.encode([_payload('{"tenant": "acme"}')]))
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.metadata["keel-key"] = b"globex:1"  # relabelled: the key id is authenticated
    tenants.create(settings, "globex")
    plain = _payload('{"tenant": "acme"}')
    denied = asyncio.run(worker.decode([tampered, plain]))
    assert [p.metadata["encoding"] for p in denied] == [b"binary/keel-denied"] * 2


def test_the_key_store_follows_another_process(settings):
    tenants.create(settings, "acme")
    worker_keys = _admin(settings)
    first = worker_keys.tenant_key("acme").data_key
    _admin(settings).require_store().destroy("acme")  # `keel tenant forget` elsewhere
    with pytest.raises(PermissionDenied):
        worker_keys.tenant_key("acme")
    tenants.create(settings, "acme")  # re-created: a new key, never the old one
    assert worker_keys.tenant_key("acme").data_key != first
