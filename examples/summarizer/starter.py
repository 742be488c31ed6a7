"""Summarise a file: ``python starter.py FILE [--max-parallel N] [--budget-usd USD]`` (with the worker running)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import uuid
from pathlib import Path

from temporalio.client import Client

from keel import KeelPlugin, KeelSettings
from workflows import SummarizeDocument, SummarizeInput

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".html", ".htm"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--budget-usd", type=float, default=None)
    args = parser.parse_args()

    inp = SummarizeInput(tenant=args.tenant, filename=args.file.name, max_parallel=args.max_parallel, budget_usd=args.budget_usd)
    if args.file.suffix.lower() in TEXT_SUFFIXES:
        inp.text = args.file.read_text()
    else:
        inp.data_b64 = base64.b64encode(args.file.read_bytes()).decode()

    settings = KeelSettings()
    # The plugin brings the pydantic data converter Keel's types travel with.
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, plugins=[KeelPlugin(settings)]
    )
    result = await client.execute_workflow(
        SummarizeDocument.run, inp, id=f"summarize-{uuid.uuid4().hex[:8]}", task_queue="summaries"
    )
    print(f"# {result.title}\n\n{result.summary}\n")
    for point in result.key_points:
        print(f"- {point}")
    print(f"\n{result.chunks_summarised}/{result.chunks_total} chunks, {result.llm_requests} LLM requests, ${result.cost_usd:.6f}")
    if result.reason:
        print(f"note: {result.reason}")


if __name__ == "__main__":
    asyncio.run(main())
