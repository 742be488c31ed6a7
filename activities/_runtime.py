"""Per-process resources shared by activities, built on first use.

Models are loaded once per worker process, not per activity call; a worker that never runs an
embedding activity never loads torch.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any

from keel.blobs import BlobStore
from keel.config import KeelSettings
from keel.types import EmbeddingSpec


class Runtime:
    def __init__(self, settings: KeelSettings) -> None:
        from keel._codec import Keys

        self.settings = settings
        self.keys = Keys.from_settings(settings, create_master=True) if settings.encryption else None
        self.blobs = BlobStore(settings.blob_dir, self.keys)
        self.client = None  # the worker's Temporal client (KeelPlugin sets it): local activities use it
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    def once(self, name: str, build: Callable[[], Any]) -> Any:
        # Activities run in a thread pool: two first calls must not load a model twice.
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    def embedder(self, spec: EmbeddingSpec | None = None):
        from keel.ingestion.embedding import Embedder

        model = (spec or self.settings.embedding_spec).model
        return self.once(f"embedder:{model}", lambda: Embedder(model, batch_size=self.settings.embed_batch_size))

    @property
    def scrubber(self):
        from keel.ingestion.pii import PIIScrubber

        return self.once("scrubber", lambda: PIIScrubber(hash_key=self.settings.pii_hash_key))

    @property
    def index(self):
        return self.once("index", self._open_index)

    def _open_index(self):
        s = self.settings
        if s.qdrant_url is None and s.embedded_engine == "edge":
            from keel.retrieval.edge import EdgeChunkIndex

            return EdgeChunkIndex(path=s.index_path, collection=s.collection, keys=self.keys)
        from keel.retrieval.store import ChunkIndex

        return ChunkIndex(
            path=s.index_path, url=s.qdrant_url, api_key=s.qdrant_api_key, collection=s.collection, keys=self.keys
        )

    def close(self) -> None:
        """Close what was opened (the embedded store flushes and releases its lock)."""
        with self._lock:
            index = self._built.pop("index", None)
        if index is not None:
            index.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, with the settings ``KeelPlugin`` configured (else ``KEEL_*``)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(KeelSettings())
    return _runtime


def configure(settings: KeelSettings) -> Runtime:
    """Use ``settings`` in this process from now on (``KeelPlugin`` calls it)."""
    global _runtime
    if _runtime is None or _runtime.settings != settings:
        if _runtime is not None:
            _runtime.close()
        _runtime = Runtime(settings)
    return _runtime


HEARTBEAT_EVERY_SECONDS = 5.0


def heartbeating(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Heartbeat from a side thread while a sync activity runs.

    With a heartbeat timeout on the call, Temporal notices within seconds that the worker
    running the activity died (SIGKILL, OOM, lost machine) and retries the activity elsewhere,
    instead of waiting for the whole start-to-close timeout.
    """
    from temporalio import activity

    @functools.wraps(fn)
    def wrapper(inp):
        if not activity.in_activity():  # called in-process (a step outside a workflow)
            return fn(inp)
        context = contextvars.copy_context()
        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT_EVERY_SECONDS):
                context.run(activity.heartbeat)

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{fn.__name__}").start()
        try:
            return fn(inp)
        finally:
            done.set()

    return wrapper
