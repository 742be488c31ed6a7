"""pytest fixtures for Keel workflows: ``pytest_plugins = ["keel.testing.pytest_plugin"]``.

* ``keel_dev_server``: one Temporal dev server for the session (its address: ``.address``).
* ``keel_fake_llm``: the fault-injecting fake LLM, its script cleared for every test.
* ``keel_env``: a factory: ``async with keel_env([MyWorkflow]) as env: ...`` on that server.

Tests are async: use pytest-asyncio (``asyncio_mode = "auto"`` with session-scoped loops).
"""

from __future__ import annotations

import functools

import pytest

from keel.offline import configure_offline
from keel.testing._env import DevServer, KeelTestEnv
from keel.testing.fake_openai import FakeOpenAI, Step

configure_offline()


@pytest.fixture(scope="session")
def keel_dev_server():
    with DevServer() as server:
        yield server


@pytest.fixture(scope="session")
def _keel_fake_llm_server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def keel_fake_llm(_keel_fake_llm_server):
    _keel_fake_llm_server.clear()
    _keel_fake_llm_server.default = Step.answer()
    yield _keel_fake_llm_server


@pytest.fixture
def keel_env(keel_dev_server, keel_fake_llm):
    return functools.partial(KeelTestEnv, address=keel_dev_server.address, fake_llm=keel_fake_llm)
