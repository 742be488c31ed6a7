"""Reading an LLM call's tokens while a run writes them (``keel ask --stream``).

A run that passes its ``WorkflowStream`` to :func:`keel.llm.complete` publishes
:class:`~keel.llm.types.StreamEvent` s to topic ``keel.llm``; :func:`follow` subscribes with
``temporalio.contrib.workflow_streams`` and turns them into what a reader sees: the text of
the current attempt as it grows, and a marker whenever an attempt's text is discarded (it
failed mid-stream and is retried or falls over, or its reply was invalid and is repaired).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from keel.llm.types import STREAM_TOPIC, StreamEvent

def json_string_prefix(text: str, field: str = "answer") -> str:
    """The decoded part of a JSON string field written so far (the reply is JSON; a reader wants
    the answer's words, not its braces).

    >>> json_string_prefix('{"answer": "The lens was rest')
    'The lens was rest'
    >>> json_string_prefix('{"answer": "He said \\\\"hi\\\\"", "citations"')
    'He said "hi"'
    >>> json_string_prefix('{"citations": [')
    ''
    """
    m = re.search(rf'"{re.escape(field)}"\s*:\s*"', text)
    if m is None:
        return ""
    i, out = m.end(), []
    while i < len(text):
        c = text[i]
        if c == '"':
            break
        if c == "\\":
            if i + 1 >= len(text):
                break
            if text[i + 1] == "u":
                if i + 6 > len(text):
                    break
                out.append(json.loads(f'"{text[i:i + 6]}"'))
                i += 6
                continue
            out.append(json.loads(f'"{text[i:i + 2]}"'))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class Shown:
    """What to print next: ``text`` to append, or a ``marker`` line."""

    text: str = ""
    marker: str = ""


async def follow(client, workflow_id: str, *, field: str | None = "answer") -> AsyncIterator[Shown]:
    """What a reader of ``workflow_id``'s token stream sees, until the run ends.

    ``field``: show only this JSON string field of the reply (None: the raw reply).
    """
    from temporalio.contrib.workflow_streams import WorkflowStreamClient

    stream = WorkflowStreamClient.create(client, workflow_id)
    current, shown = "", ""
    async for item in stream.subscribe([STREAM_TOPIC], result_type=StreamEvent):
        event: StreamEvent = item.data
        if event.kind == "start":
            current, shown = "", ""
        elif event.kind == "token":
            current += event.text
            visible = json_string_prefix(current, field) if field else current
            if visible.startswith(shown) and len(visible) > len(shown):
                yield Shown(text=visible[len(shown):])
                shown = visible
        elif event.kind == "discard":
            where = f"{event.provider}, call {event.call}" + (f", attempt {event.attempt}" if event.attempt else "")
            yield Shown(marker=f"[discarded ({where}): {event.text}; the answer follows anew]")
            current, shown = "", ""
