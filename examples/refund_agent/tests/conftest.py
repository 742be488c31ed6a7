from __future__ import annotations

import contextlib

import pytest

from workflows import ACTIVITIES, LEDGER_ENV, WORKFLOWS

# keel_dev_server (a real Temporal dev server for the session), keel_fake_llm (an
# OpenAI-compatible server on loopback) and keel_env (a worker with KeelPlugin on that server).
pytest_plugins = ["keel.testing.pytest_plugin"]


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    """Where ``execute_refund`` pays refunds in this test (one line per refund)."""
    path = tmp_path / "refunds.tsv"
    monkeypatch.setenv(LEDGER_ENV, str(path))
    return path


@pytest.fixture
def refund_env(keel_env, ledger):
    """``keel_env`` with this project's workflow, the agent's tools and ``execute_refund``."""

    @contextlib.asynccontextmanager
    async def env(**settings):
        async with keel_env(WORKFLOWS, ACTIVITIES, **settings) as e:
            yield e

    return env
