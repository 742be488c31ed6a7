"""Claim-check store: large data (document text, chunks, vectors) lives here, and workflow
history carries only the key.

Content-addressed (the key is the SHA-256 of the bytes), so writing the same data twice is a
no-op and an activity retried after a crash produces the same key. The embedded default keeps
blobs under ``.keel/blobs``; workers on several machines need that folder on shared storage
(NFS, a mounted bucket), see ``infra/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write-then-rename so a reader never sees a half-written blob after a crash.
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return key

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_json(self, value: Any) -> str:
        return self.put(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))
