"""Claim-check store: large data (document text, chunks, vectors) lives here, and workflow
history carries only the key.

Every blob belongs to a tenant (the tenant scope of the activity writing it, see
``keel._codec.tenant_scope``) and is sealed with AES-256-GCM under that tenant's blob key, in
``<root>/<tenant>/``. Its key is an HMAC of the content under the tenant's blob-id key: writing
the same data twice is a no-op and an activity retried after a crash produces the same key, yet
the key reveals nothing about the content (a plain hash would confirm a guessed document). The
embedded default keeps blobs under ``.keel/blobs``; workers on several machines need that folder
on shared storage (NFS, a mounted bucket), see ``infra/``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"KB1"


class BlobStore:
    """Sealed, content-keyed blobs per tenant.

    >>> import tempfile
    >>> from keel._codec import Keys, tenant_scope
    >>> d = Path(tempfile.mkdtemp())
    >>> keys = Keys(keys_dir=d / "keys", master_key_file=d / "master.key", keyring=d / "ring.json",
    ...             auto_create=True, create_master=True)
    >>> blobs = BlobStore(d / "blobs", keys)
    >>> with tenant_scope("acme"):
    ...     key = blobs.put(b"Jane Roe, 4111 1111 1111 1111")
    ...     blobs.get(key)
    b'Jane Roe, 4111 1111 1111 1111'
    >>> b"Jane" in (d / "blobs" / "acme" / key[:2] / key).read_bytes()
    False
    """

    def __init__(self, root: Path, keys=None) -> None:
        self.root = Path(root)
        self.keys = keys  # None: plaintext (encryption off)

    def _tenant(self, tenant: str | None) -> str:
        from keel._codec import current_tenant
        from keel.keys import DEPLOYMENT

        return tenant or current_tenant() or DEPLOYMENT

    def _path(self, tenant: str, key: str) -> Path:
        if self.keys is None:  # encryption off: one plain content-addressed store, as before 0.4
            return self.root / key[:2] / key
        return self.root / tenant / key[:2] / key

    def put(self, data: bytes, tenant: str | None = None) -> str:
        tenant = self._tenant(tenant)
        if self.keys is None:
            key, sealed = hashlib.sha256(data).hexdigest(), data
        else:
            # The id key never rotates (version 1), so a retried write finds its blob.
            key = hmac.new(self.keys.tenant_key(tenant, 1, create=True).key("blob-id"), data, hashlib.sha256).hexdigest()
            sealed = None
        path = self._path(tenant, key)
        if not path.exists():
            if sealed is None:
                current = self.keys.tenant_key(tenant, create=True)
                nonce = secrets.token_bytes(12)
                header = MAGIC + struct.pack(">I", current.version) + nonce
                sealed = header + AESGCM(current.key("blob")).encrypt(nonce, data, f"keel-blob|{tenant}|{key}".encode())
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write-then-rename so a reader never sees a half-written blob after a crash.
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
            os.replace(tmp, path)
        return key

    def get(self, key: str, tenant: str | None = None) -> bytes:
        tenant = self._tenant(tenant)
        path = self._path(tenant, key)
        raw = path.read_bytes()
        try:
            os.utime(path)  # last use, for garbage collection
        except OSError:
            pass
        if self.keys is None or not raw.startswith(MAGIC):
            return raw
        version = struct.unpack(">I", raw[3:7])[0]
        nonce = raw[7:19]
        return AESGCM(self.keys.tenant_key(tenant, version).key("blob")).decrypt(nonce, raw[19:], f"keel-blob|{tenant}|{key}".encode())

    def delete(self, keys: list[str], tenant: str | None = None) -> int:
        """Delete these blobs of the tenant; how many existed."""
        tenant = self._tenant(tenant)
        n = 0
        for key in keys:
            try:
                self._path(tenant, key).unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n

    def forget_tenant(self, tenant: str) -> tuple[int, int]:
        """Delete every blob of the tenant: ``(blobs, bytes)`` removed (with encryption off,
        blobs are not kept per tenant: nothing)."""
        root = self.root / tenant
        if self.keys is None or not root.exists():
            return 0, 0
        files = [p for p in root.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(root)
        return len(files), size

    def collect_garbage(self, older_than_seconds: float) -> tuple[int, int]:
        """Delete blobs unused (not written or read) for this long: ``(blobs, bytes)``."""
        cutoff = time.time() - older_than_seconds
        n = size = 0
        if not self.root.exists():
            return 0, 0
        for p in self.root.rglob("*"):
            if p.is_file() and p.stat().st_mtime < cutoff:
                size += p.stat().st_size
                p.unlink()
                n += 1
        return n, size

    def put_json(self, value: Any, tenant: str | None = None) -> str:
        return self.put(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(), tenant)

    def get_json(self, key: str, tenant: str | None = None) -> Any:
        return json.loads(self.get(key, tenant))
