from __future__ import annotations

import contextlib

import pytest

from workflows import WORKFLOWS

# keel_dev_server (a real Temporal dev server for the session), keel_fake_llm (an
# OpenAI-compatible server on loopback) and keel_env (a worker with KeelPlugin on that server).
pytest_plugins = ["keel.testing.pytest_plugin"]


@pytest.fixture
def triage_env(keel_env):
    """``keel_env`` with this project's workflows."""

    @contextlib.asynccontextmanager
    async def env(**settings):
        async with keel_env(WORKFLOWS, **settings) as e:
            yield e

    return env
