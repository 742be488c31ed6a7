"""SIGKILL a worker in the middle of a 60-document ingest: every document still finishes once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.conftest import KeelEnv, start_env
from keel.workflows.ingest import IngestCorpus

pytestmark = pytest.mark.asyncio(loop_scope="session")

N_DOCS = 60
TOPICS = ["lamp", "tide", "fog horn", "keeper", "lens", "gallery", "storm", "beacon", "harbour", "signal"]


def write_corpus(folder, n: int) -> None:
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        paragraphs = [
            f"Log entry {i} about the {topic}.",
            " ".join(f"On day {d} the {topic} crew recorded reading {i * 31 + d} at station {i}." for d in range(8 + i % 30)),
        ]
        (folder / f"log_{i:03}.txt").write_text("\n\n".join(paragraphs))


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def test_killing_a_worker_mid_ingest_loses_and_duplicates_nothing(tmp_path_factory, temporal_settings, fake_llm):
    corpus = tmp_path_factory.mktemp("crash-corpus")
    write_corpus(corpus, N_DOCS)
    env: KeelEnv = await start_env(
        tmp_path_factory.mktemp("crash"),
        temporal_settings,
        "crash",
        workers=2,
        llm_base_url=fake_llm.base_url,
        llm_start_local=False,
        ingest_concurrency=6,
    )
    try:
        handle = await env.start_ingest([corpus], tenant="crashed")

        async def some_done() -> bool:
            try:
                progress = await handle.query(IngestCorpus.progress)
            except Exception:
                return False
            return progress.done >= 10

        await wait_until(some_done, 300, "10 documents to finish")
        progress = await handle.query(IngestCorpus.progress)
        assert progress.done < N_DOCS, "the ingest finished before the crash could be injected"

        # Kill the worker that owns the embedded index: the hardest case, since index writes
        # must wait for a new owner and the store must reopen intact.
        workers = [p for p in env.stack.running() if p.role == "worker"]
        victim = next(p for p in workers if "--index" in p.cmd)
        os.kill(victim.pid, signal.SIGKILL)
        await wait_until(lambda: _dead(env, victim), 10, "the killed worker to disappear")
        env.stack.up(workers=2, say=lambda _: None)  # starts a replacement that owns the index

        crashed = await asyncio.wait_for(handle.result(), timeout=600)
        assert crashed.failed == 0, crashed.failures
        assert crashed.indexed == N_DOCS

        # The same corpus ingested cleanly into another tenant gives exactly the same counts.
        clean = await env.ingest([corpus], tenant="clean")
        assert clean.indexed == N_DOCS
        crashed_stats, clean_stats = await env.stats("crashed"), await env.stats("clean")
        assert crashed_stats.documents == clean_stats.documents == N_DOCS
        assert crashed_stats.chunks == clean_stats.chunks == clean.chunks
    finally:
        env.stack.down(say=lambda _: None)


async def _dead(env: KeelEnv, victim) -> bool:
    return not env.stack.alive(victim)
