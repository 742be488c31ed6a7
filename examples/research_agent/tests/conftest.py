from __future__ import annotations

import contextlib

import pytest

from workflows import ACTIVITIES, WORKFLOWS

# keel_dev_server (a real Temporal dev server for the session), keel_fake_llm (an
# OpenAI-compatible server on loopback) and keel_env (a worker with KeelPlugin on that server).
pytest_plugins = ["keel.testing.pytest_plugin"]


@pytest.fixture
def research_env(keel_env):
    """``keel_env`` with this project's workflows and the agent's tool."""

    @contextlib.asynccontextmanager
    async def env(**settings):
        async with keel_env(WORKFLOWS, ACTIVITIES, **settings) as e:
            yield e

    return env
