"""Payload encryption per tenant (a Temporal ``PayloadCodec``) and the tenant scope of a call.

Every payload Keel's clients and workers send is sealed with AES-256-GCM under the payload key
of one tenant; the key id (``tenant:version``) travels in clear metadata and is bound into the
authenticated data, so a payload cannot be relabelled. Which tenant seals a payload:

1. the payload's own ``tenant`` field (an input such as ``AskInput(tenant="acme")``);
2. the tenant scope of the code that sends it (:func:`tenant_scope`; inside an activity, its
   run's tenant);
3. the tenant of the workflow it belongs to, once this process has seen that run's payloads;
4. the only tenant of a caller's keyring, or the deployment key.

Decoding authenticates: a worker turns a payload that is not sealed, sealed with a key it does
not know, or sealed for another tenant than the run it is sent to, into a denial that Keel's
payload converter raises as :class:`~keel.errors.PermissionDenied` (a run fails before any step;
a signal is dropped; a query or update is refused). A decoded value that names a ``tenant``
other than the one whose key sealed it is refused the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from keel.errors import PermissionDenied
from keel.keys import DEPLOYMENT, KeyStore, Keyring, LocalKeyProvider, check_tenant

ENCRYPTED = b"binary/keel-encrypted"
DENIED = b"binary/keel-denied"
TENANT_METADATA = "keel-tenant"  # set on decoded payloads: whose key authenticated them

_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("keel_tenant_scope", default=None)


@contextlib.contextmanager
def tenant_scope(tenant: str | None) -> Iterator[None]:
    """Payloads sent inside this block that name no tenant are sealed for ``tenant``."""
    token = _scope.set(tenant)
    try:
        yield
    finally:
        _scope.reset(token)


def current_tenant() -> str | None:
    return _scope.get()


class _RunTenants:
    """Which tenant each workflow id (seen by this process) belongs to; bounded."""

    def __init__(self, size: int = 100_000) -> None:
        self._map: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, workflow_id: str | None) -> str | None:
        if not workflow_id:
            return None
        with self._lock:
            return self._map.get(workflow_id)

    def remember(self, workflow_id: str | None, tenant: str) -> None:
        if not workflow_id:
            return
        with self._lock:
            if workflow_id not in self._map:
                self._map[workflow_id] = tenant
                if len(self._map) > self._size:
                    self._map.popitem(last=False)


class Keys:
    """The keys this process holds: the key store (workers and administrators: every tenant)
    if the master key is available, else only the caller's keyring."""

    def __init__(self, *, keys_dir: Path, master_key_file: Path, keyring: Path, auto_create: bool, create_master: bool = False) -> None:
        self.keys_dir, self.master_key_file = Path(keys_dir), Path(master_key_file)
        self.keyring = Keyring(keyring)
        self.auto_create = auto_create
        self.create_master = create_master
        self._store: KeyStore | None = None
        self._lock = threading.Lock()
        self.runs = _RunTenants()  # per caller: one process may host several

    @classmethod
    def from_settings(cls, settings, *, create_master: bool = False) -> Keys:
        return cls(
            keys_dir=settings.keys_dir, master_key_file=settings.master_key_path, keyring=settings.keyring_path,
            auto_create=settings.auto_create_tenants, create_master=create_master,
        )

    @property
    def store(self) -> KeyStore | None:
        # Looked up on use: `keel up` may create the master key after a client was built.
        if self._store is None:
            with self._lock:
                if self._store is None:
                    # A fresh deployment (no tenant keys yet) makes its master key; one that has
                    # tenant keys never silently gets a new, useless one.
                    fresh = not any(self.keys_dir.glob("*.json")) if self.keys_dir.exists() else True
                    provider = LocalKeyProvider.from_file(self.master_key_file, create=self.create_master and fresh)
                    if provider is not None:
                        self._store = KeyStore(self.keys_dir, provider)
        return self._store

    def require_store(self) -> KeyStore:
        store = self.store
        if store is None:
            raise PermissionDenied(f"no master key here ({self.master_key_file} or KEEL_MASTER_KEY): only workers and administrators hold the key store")
        return store

    def tenant_key(self, tenant: str, version: int | None = None, *, create: bool = False):
        """A tenant's data key from the key store (creating the tenant if allowed)."""
        store = self.require_store()
        # The deployment key is the workers' own: always made where the key store is.
        if create and (self.auto_create or tenant == DEPLOYMENT) and not store.exists(tenant):
            store.create(tenant)
        return store.key(tenant, version)

    def payload_key(self, tenant: str, version: int | None = None, *, create: bool = False) -> tuple[int, bytes]:
        if self.store is not None:
            key = self.tenant_key(tenant, version, create=create)
            return key.version, key.key("payload")
        return self.keyring.payload_key(tenant, version)

    def default_tenant(self) -> str:
        if self.store is None:
            held = self.keyring.tenants()
            if len(held) == 1:
                return held[0]
        return DEPLOYMENT


def ensure_local_keys(settings) -> None:
    """The embedded default's master key and deployment key, made before any client or worker
    needs them (``keel up``, test environments); a no-op once they exist."""
    if settings.encryption:
        Keys.from_settings(settings, create_master=True).tenant_key(DEPLOYMENT, create=True)


_aeads: dict[bytes, AESGCM] = {}


def _aead(key: bytes) -> AESGCM:
    aead = _aeads.get(key)
    if aead is None:
        aead = _aeads[key] = AESGCM(key)
    return aead


def _aad(tenant: str, version: int) -> bytes:
    return f"keel-payload|{tenant}|{version}".encode()


def denied(reason: str) -> Payload:
    return Payload(metadata={"encoding": DENIED}, data=reason.encode())


def _tenants_in(value, found: list[str], depth: int = 0) -> None:
    if depth > 12:
        return
    if isinstance(value, dict):
        tenant = value.get("tenant")
        if isinstance(tenant, str) and tenant:
            found.append(tenant)
        for v in value.values():
            if isinstance(v, (dict, list)):
                _tenants_in(v, found, depth + 1)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                _tenants_in(v, found, depth + 1)


def named_tenants(payload: Payload) -> list[str]:
    """Every ``tenant`` field in a JSON payload, nested ones too (an input wrapping another)."""
    if payload.metadata.get("encoding") != b"json/plain" or b'"tenant"' not in payload.data:
        return []
    try:
        value = json.loads(payload.data)
    except ValueError:
        return []
    found: list[str] = []
    _tenants_in(value, found)
    return found


class KeelCodec(PayloadCodec, WithSerializationContext):
    """Seals and opens payloads with tenant keys (see the module docstring).

    :param keys: the keys this process holds.
    :param accept_plaintext: decode payloads that are not sealed (runs started before
        encryption was turned on). Off by default: a plaintext payload is refused.
    """

    def __init__(self, keys: Keys, *, accept_plaintext: bool = False, context: SerializationContext | None = None) -> None:
        self.keys = keys
        self.accept_plaintext = accept_plaintext
        self.context = context

    def with_context(self, context: SerializationContext) -> KeelCodec:
        return type(self)(self.keys, accept_plaintext=self.accept_plaintext, context=context)

    @property
    def _workflow_id(self) -> str | None:
        return getattr(self.context, "workflow_id", None)

    def seal(self, payload: Payload, tenant: str) -> Payload:
        version, key = self.keys.payload_key(tenant, create=True)
        nonce = secrets.token_bytes(12)
        return Payload(
            metadata={"encoding": ENCRYPTED, "keel-key": f"{tenant}:{version}".encode()},
            data=nonce + _aead(key).encrypt(nonce, payload.SerializeToString(), _aad(tenant, version)),
        )

    def open(self, payload: Payload) -> tuple[str, Payload]:
        """``(tenant, inner payload)``; ``PermissionDenied`` if this process cannot open it."""
        tenant, _, version = payload.metadata.get("keel-key", b"").decode().rpartition(":")
        if not tenant or not version.isdigit():
            raise PermissionDenied("an encrypted payload without a valid key id")
        _, key = self.keys.payload_key(tenant, int(version))
        try:
            plain = _aead(key).decrypt(payload.data[:12], payload.data[12:], _aad(tenant, int(version)))
        except InvalidTag:
            raise PermissionDenied(f"a payload not authenticated by tenant {tenant!r}'s key") from None
        inner = Payload.FromString(plain)
        inner.metadata[TENANT_METADATA] = tenant.encode()
        return tenant, inner

    def _chosen_tenant(self, payload: Payload) -> tuple[str, bool]:
        """The tenant to seal for, and whether that was decided (named, scoped) or guessed."""
        named = named_tenants(payload)
        decided = (named[0] if named else None) or current_tenant()
        if decided:
            return decided, True
        return self.keys.runs.get(self._workflow_id) or self.keys.default_tenant(), False

    def tenant_for(self, payload: Payload) -> str:
        return self._chosen_tenant(payload)[0]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            tenant, decided = self._chosen_tenant(p)
            if tenant != DEPLOYMENT:
                check_tenant(tenant)
            out.append(self.seal(p, tenant))
            if decided:  # a fallback (a query's argument sealed with the deployment key) says nothing of the run
                self.keys.runs.remember(self._workflow_id, tenant)
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        # A worker (holding the key store) answers an unauthentic payload with a denial that the
        # payload converter raises where the SDK turns it into a failed run, a dropped signal or
        # a refused query; a client raises at once.
        worker = self.keys.store is not None
        out = []
        for p in payloads:
            try:
                out.append(self._decode_one(p))
            except PermissionDenied as e:
                if not worker:
                    raise
                out.append(denied(e.message))
        return out

    def _decode_one(self, p: Payload) -> Payload:
        if p.metadata.get("encoding") != ENCRYPTED:
            if p.metadata.get("encoding") == DENIED or self.accept_plaintext:
                return p
            raise PermissionDenied("a payload that is not encrypted with a tenant key (payload encryption is required)")
        tenant, inner = self.open(p)
        wf = self._workflow_id
        if isinstance(self.context, WorkflowSerializationContext):
            owner = self.keys.runs.get(wf)
            if owner is not None and tenant not in (owner, DEPLOYMENT):
                raise PermissionDenied(f"a payload of tenant {tenant!r} sent to a run of another tenant ({wf})")
            self.keys.runs.remember(wf, tenant)
        elif isinstance(self.context, ActivitySerializationContext):
            self.keys.runs.remember(wf, tenant)
        return inner


def check_payload_tenant(payload: Payload) -> None:
    """Refuse a payload naming a tenant (anywhere in it) other than the one whose key sealed it."""
    sealed_for = payload.metadata.get(TENANT_METADATA)
    if not sealed_for or sealed_for == DEPLOYMENT.encode():
        return
    for named in named_tenants(payload):
        if named != sealed_for.decode():
            raise PermissionDenied(f"a request for tenant {named!r} authenticated by tenant {sealed_for.decode()!r}'s key")
