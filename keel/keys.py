"""Tenant keys: envelope encryption with one data key per tenant, wrapped by a master key.

* The **master key** never leaves the key provider. The embedded default keeps it in a file
  (``<data_dir>/master.key``) or the ``KEEL_MASTER_KEY`` environment variable (base64 of 32
  bytes); production implements :class:`KeyProvider` over its KMS (``wrap`` / ``unwrap``).
* A tenant's **data key** (32 random bytes, one per version) is stored wrapped in the key store
  (``<data_dir>/keys/<tenant>.json``). Every key Keel uses for the tenant is derived from it with
  HKDF, one per purpose: payloads in Temporal histories, blobs, index text, the answer cache.
  Rotation adds a version: new data is sealed with the newest one, old data names its version.
* A caller's **credential** for a tenant is the tenant's payload key, held in a keyring file
  (``KEEL_KEYRING``, default ``<data_dir>/keyring.json``). It lets a client start, signal and
  read that tenant's runs and nothing else: at-rest keys cannot be derived from it.
* **Erasure** destroys the wrapped data key: everything sealed with it, histories included,
  becomes unreadable (crypto-shredding).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keel.errors import PermissionDenied

DEPLOYMENT = "_deployment"
"""The key id of payloads that belong to no tenant (e.g. the provider breakers): held by workers
and administrators, never by a tenant's callers."""

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PURPOSES = ("payload", "blob", "blob-id", "index", "cache")


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name (letters, digits, ``._-``; 64 at most)."""
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValueError(f"invalid tenant name {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return tenant


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def derive(data_key: bytes, purpose: str) -> bytes:
    """The 32-byte key for one purpose (``PURPOSES``), derived from a tenant's data key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keel/" + purpose.encode()).derive(data_key)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key it never reveals (a KMS in production)."""

    def wrap(self, key: bytes, *, context: bytes) -> tuple[str, bytes]:
        """``(master key id, wrapped key)``; ``context`` is authenticated (the tenant's name)."""
        ...

    def unwrap(self, master_key_id: str, wrapped: bytes, *, context: bytes) -> bytes: ...


class LocalKeyProvider:
    """Master keys held locally (AES-256-GCM key wrapping). The newest one wraps; every one
    listed unwraps, so a master key can be rotated (``keel keys rotate-master``) without
    re-encrypting data: only the small wrapped data keys are re-wrapped.

    >>> p = LocalKeyProvider({"m1": bytes(32)})
    >>> kid, wrapped = p.wrap(b"k" * 32, context=b"acme")
    >>> p.unwrap(kid, wrapped, context=b"acme") == b"k" * 32
    True
    """

    def __init__(self, master_keys: dict[str, bytes], current: str | None = None) -> None:
        if not master_keys:
            raise ValueError("no master key")
        self.master_keys = dict(master_keys)
        self.current = current or sorted(self.master_keys)[-1]

    def wrap(self, key: bytes, *, context: bytes) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(12)
        return self.current, nonce + AESGCM(self.master_keys[self.current]).encrypt(nonce, key, b"keel-wrap|" + context)

    def unwrap(self, master_key_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        if master_key_id not in self.master_keys:
            raise PermissionDenied(f"master key {master_key_id!r} is not available")
        return AESGCM(self.master_keys[master_key_id]).decrypt(wrapped[:12], wrapped[12:], b"keel-wrap|" + context)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = False) -> LocalKeyProvider | None:
        """Master keys from ``KEEL_MASTER_KEY`` (base64) or ``path`` (JSON written by Keel);
        ``None`` when neither exists (a client-only process). ``create`` makes the file."""
        env = os.environ.get("KEEL_MASTER_KEY")
        if env:
            return cls({"env": base64.b64decode(env)})
        path = Path(path)
        if not path.exists():
            if not create:
                return None
            _write_private(path, json.dumps({"current": "m1", "keys": {"m1": _b64(secrets.token_bytes(32))}}))
        doc = json.loads(path.read_text())
        return cls({k: base64.b64decode(v) for k, v in doc["keys"].items()}, doc["current"])


@dataclass(frozen=True)
class TenantKey:
    tenant: str
    version: int
    data_key: bytes

    def key(self, purpose: str) -> bytes:
        return derive(self.data_key, purpose)


class KeyStore:
    """Wrapped data keys, one file per tenant, under ``root``. Held by workers and admins.

    >>> import tempfile
    >>> store = KeyStore(Path(tempfile.mkdtemp()), LocalKeyProvider({"m1": bytes(32)}))
    >>> store.create("acme"), store.create("acme")
    (True, False)
    >>> store.key("acme").version, store.rotate("acme"), store.key("acme", 1).version
    (1, 2, 1)
    >>> store.destroy("acme"); store.exists("acme")
    False
    """

    def __init__(self, root: Path, provider: KeyProvider) -> None:
        self.root = Path(root)
        self.provider = provider
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], TenantKey] = {}
        self._latest: dict[str, int] = {}
        self._signatures: dict[str, tuple | None] = {}

    def _path(self, tenant: str) -> Path:
        return self.root / f"{tenant}.json"

    def exists(self, tenant: str) -> bool:
        return self._path(tenant).exists()

    def tenants(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.exists() else []

    def _versions(self, tenant: str) -> list[dict]:
        try:
            return json.loads(self._path(tenant).read_text())["versions"]
        except FileNotFoundError:
            raise PermissionDenied(f"no key for tenant {tenant!r}: unknown or forgotten tenant (keel tenant create {tenant})") from None

    def _write(self, tenant: str, versions: list[dict]) -> None:
        _write_private(self._path(tenant), json.dumps({"tenant": tenant, "versions": versions}, indent=1))

    def _new_version(self, tenant: str, version: int) -> dict:
        master_id, wrapped = self.provider.wrap(secrets.token_bytes(32), context=tenant.encode())
        return {"version": version, "master_key_id": master_id, "wrapped": _b64(wrapped), "created": int(time.time())}

    def create(self, tenant: str) -> bool:
        """Create the tenant's first data key; ``False`` if it already has one."""
        if tenant != DEPLOYMENT:
            check_tenant(tenant)
        with self._lock:
            if self.exists(tenant):
                return False
            self._write(tenant, [self._new_version(tenant, 1)])
            return True

    def rotate(self, tenant: str) -> int:
        """Add a data key version (new data uses it; old data stays readable); its number."""
        with self._lock:
            versions = self._versions(tenant)
            versions.append(self._new_version(tenant, max(v["version"] for v in versions) + 1))
            self._write(tenant, versions)
            return versions[-1]["version"]

    def rewrap(self) -> int:
        """Re-wrap every data key with the provider's current master key; how many."""
        n = 0
        with self._lock:
            for tenant in self.tenants():
                versions = self._versions(tenant)
                for v in versions:
                    key = self.provider.unwrap(v["master_key_id"], base64.b64decode(v["wrapped"]), context=tenant.encode())
                    v["master_key_id"], wrapped = self.provider.wrap(key, context=tenant.encode())
                    v["wrapped"] = _b64(wrapped)
                    n += 1
                self._write(tenant, versions)
        return n

    def destroy(self, tenant: str) -> None:
        """Delete the tenant's wrapped keys: what they sealed is unreadable from now on."""
        with self._lock:
            self._path(tenant).unlink(missing_ok=True)
            self._cache = {k: v for k, v in self._cache.items() if k[0] != tenant}
            self._latest.pop(tenant, None)

    def key(self, tenant: str, version: int | None = None) -> TenantKey:
        """The tenant's data key (newest version by default); ``PermissionDenied`` if none."""
        # Another process may have forgotten, re-created or rotated the tenant: the file's
        # identity decides whether what this process cached is still the tenant's key.
        try:
            st = self._path(tenant).stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        with self._lock:
            if self._signatures.get(tenant) != signature:
                self._cache = {k: v for k, v in self._cache.items() if k[0] != tenant}
                self._latest.pop(tenant, None)
                self._signatures[tenant] = signature
            wanted = self._latest.get(tenant) if version is None else version
            if wanted is not None and (tenant, wanted) in self._cache:
                return self._cache[(tenant, wanted)]
            versions = self._versions(tenant)
            self._latest[tenant] = versions[-1]["version"]
            chosen = versions[-1] if version is None else next((v for v in versions if v["version"] == version), None)
            if chosen is None:
                raise PermissionDenied(f"tenant {tenant!r} has no key version {version}")
            raw = self.provider.unwrap(chosen["master_key_id"], base64.b64decode(chosen["wrapped"]), context=tenant.encode())
            key = self._cache[(tenant, chosen["version"])] = TenantKey(tenant, chosen["version"], raw)
            return key


class Keyring:
    """A caller's credentials: payload keys of the tenants it may act for (a JSON file).

    >>> import tempfile
    >>> ring = Keyring(Path(tempfile.mkdtemp()) / "keyring.json")
    >>> ring.add("acme", 1, bytes(32)); ring.tenants()
    ['acme']
    >>> ring.payload_key("acme")[0], ring.payload_key("globex", missing_ok=True)
    (1, None)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._doc: dict = {"tenants": {}}

    def _load(self) -> dict:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._doc = None, {"tenants": {}}
            return self._doc
        if mtime != self._mtime:
            self._doc, self._mtime = json.loads(self.path.read_text()), mtime
        return self._doc

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted(self._load()["tenants"])

    def payload_key(self, tenant: str, version: int | None = None, *, missing_ok: bool = False) -> tuple[int, bytes] | None:
        with self._lock:
            versions = self._load()["tenants"].get(tenant, {})
        if version is None and versions:
            version = max(int(v) for v in versions)
        key = versions.get(str(version)) if version is not None else None
        if key is None:
            if missing_ok:
                return None
            raise PermissionDenied(f"this caller holds no credential for tenant {tenant!r} (keyring {self.path})")
        return int(version), base64.b64decode(key)

    def add(self, tenant: str, version: int, payload_key: bytes) -> None:
        with self._lock:
            doc = json.loads(json.dumps(self._load()))
            doc["tenants"].setdefault(tenant, {})[str(version)] = _b64(payload_key)
            _write_private(self.path, json.dumps(doc, indent=1))

    def remove(self, tenant: str) -> bool:
        with self._lock:
            doc = json.loads(json.dumps(self._load()))
            found = doc["tenants"].pop(tenant, None) is not None
            if found:
                _write_private(self.path, json.dumps(doc, indent=1))
            return found


_SEALED = b"KS1"


def seal(keys, tenant: str, purpose: str, data: bytes) -> bytes:
    """``data`` sealed (AES-256-GCM) under the tenant's newest key for ``purpose``; the tenant and
    purpose are authenticated, the key version travels in the header. ``keys`` is a
    ``keel._codec.Keys`` holding the key store (workers, administrators).

    >>> import tempfile
    >>> from keel._codec import Keys
    >>> d = Path(tempfile.mkdtemp())
    >>> keys = Keys(keys_dir=d / "k", master_key_file=d / "m", keyring=d / "r", auto_create=True, create_master=True)
    >>> sealed = seal(keys, "acme", "index", b"Jane Roe")
    >>> b"Jane" in sealed, unseal(keys, "acme", "index", sealed)
    (False, b'Jane Roe')
    """
    key = keys.tenant_key(tenant, create=True)
    nonce = secrets.token_bytes(12)
    aad = f"keel-{purpose}|{tenant}".encode()
    return _SEALED + key.version.to_bytes(4, "big") + nonce + AESGCM(key.key(purpose)).encrypt(nonce, data, aad)


def unseal(keys, tenant: str, purpose: str, sealed: bytes) -> bytes:
    """The data :func:`seal` sealed; ``PermissionDenied`` if the tenant's key is gone."""
    if not sealed.startswith(_SEALED):
        raise PermissionDenied(f"not sealed data (tenant {tenant!r}, {purpose})")
    version = int.from_bytes(sealed[3:7], "big")
    key = keys.tenant_key(tenant, version)
    return AESGCM(key.key(purpose)).decrypt(sealed[7:19], sealed[19:], f"keel-{purpose}|{tenant}".encode())


def seal_text(keys, tenant: str, purpose: str, text: str) -> str:
    """:func:`seal` for text fields (base64), e.g. a chunk's text in an index payload."""
    return base64.b64encode(seal(keys, tenant, purpose, text.encode())).decode()


def unseal_text(keys, tenant: str, purpose: str, sealed: str) -> str:
    return unseal(keys, tenant, purpose, base64.b64decode(sealed)).decode()


def lookup_key(keys, tenant: str, purpose: str, text: str) -> str:
    """A keyed hash of ``text`` for exact lookups (a cache key) that reveals nothing of it;
    stable across key rotation (it uses the tenant's first key version)."""
    import hashlib
    import hmac

    return hmac.new(keys.tenant_key(tenant, 1, create=True).key(purpose), text.encode(), hashlib.sha256).hexdigest()
