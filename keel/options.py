"""How each durable step runs: one typed options object, with documented defaults per step.

Every step of :mod:`keel.steps` and :func:`keel.llm.complete` takes ``options=StepOptions(...)``;
a field left ``None`` keeps that step's default from :data:`STEP_DEFAULTS`. The failure behaviour
of a step is therefore visible where it is called, and overridable per call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy

from keel.errors import NON_RETRYABLE


@dataclass(frozen=True)
class StepOptions:
    """Options of one durable step; ``None`` keeps the step's default.

    :param start_to_close_timeout: the longest one attempt may take.
    :param schedule_to_close_timeout: the longest all attempts together may take (incl. waiting
        for a worker).
    :param heartbeat_timeout: a worker that stops heartbeating this long is presumed dead and the
        attempt is retried elsewhere (regular activities only).
    :param retry_policy: Temporal's retry policy; Keel's defaults never retry bad input
        (:data:`keel.errors.NON_RETRYABLE`).
    :param task_queue: where the step runs (regular activities only); index steps default to the
        index owner's queue, LLM requests to the provider's own queue.
    :param local: run as a local activity (in the workflow's worker, no task-queue round trip):
        for short, CPU-light steps. Index reads (``hybrid_search``, ``indexed_versions``,
        ``index_stats``) default to ``None``: local when the workflow itself runs on the index
        owner's queue (every worker polling it owns the index, so the choice is the same on
        every replay), a regular activity on that queue otherwise.

    >>> from datetime import timedelta
    >>> opts = StepOptions(start_to_close_timeout=timedelta(seconds=5))
    >>> merged = STEP_DEFAULTS["scrub_pii"].merged(opts)
    >>> merged.start_to_close_timeout, merged.local
    (datetime.timedelta(seconds=5), True)
    """

    start_to_close_timeout: timedelta | None = None
    schedule_to_close_timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    retry_policy: RetryPolicy | None = None
    task_queue: str | None = None
    local: bool | None = None

    def merged(self, override: StepOptions | None) -> StepOptions:
        """These options with every field ``override`` sets replaced."""
        if override is None:
            return self
        changes = {f.name: getattr(override, f.name) for f in dataclasses.fields(override) if getattr(override, f.name) is not None}
        return dataclasses.replace(self, **changes)


# Bad input fails at once; anything else (a worker crash, a full disk) is retried with backoff.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE,
)
# Index writes wait for the index owner as long as it takes (no attempt limit): a document is
# never lost because the owner was restarting.
INDEX_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), non_retryable_error_types=NON_RETRYABLE)
# Activities heartbeat every few seconds; a worker that dies mid-step is noticed this fast.
HEARTBEAT = timedelta(seconds=30)

_regular = StepOptions(heartbeat_timeout=HEARTBEAT, retry_policy=STEP_RETRY, local=False)
_local = StepOptions(start_to_close_timeout=timedelta(seconds=30), retry_policy=STEP_RETRY, local=True)

# The default options of every step. Local: short and CPU-light, or reads of small blobs; the
# per-step round trip through a task queue would cost more than the work. Regular: long steps
# that heartbeat (partition, embed), and steps that must run elsewhere (the index owner's queue).
STEP_DEFAULTS: dict[str, StepOptions] = {
    "list_documents": dataclasses.replace(
        _regular,
        start_to_close_timeout=timedelta(minutes=30),
        retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["FileNotFoundError", *NON_RETRYABLE]),
    ),
    "read_manifest_page": dataclasses.replace(_local, start_to_close_timeout=timedelta(minutes=1)),
    "partition": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=10)),
    "scrub_document": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=10)),
    "scrub_pii": _local,
    "chunk": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=2)),
    "discard": dataclasses.replace(_local, start_to_close_timeout=timedelta(minutes=1)),
    "read_chunks": _local,
    "embed": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=30)),
    "index_document": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=30), retry_policy=INDEX_RETRY),
    "delete_document": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=5), retry_policy=INDEX_RETRY),
    "set_readers": dataclasses.replace(_regular, start_to_close_timeout=timedelta(minutes=5), retry_policy=INDEX_RETRY),
    # Index reads: local on the index owner's own queue (local=None), else regular on that queue.
    "indexed_versions": StepOptions(start_to_close_timeout=timedelta(minutes=2), retry_policy=INDEX_RETRY),
    "embed_query": StepOptions(start_to_close_timeout=timedelta(minutes=1), retry_policy=STEP_RETRY),
    "hybrid_search": StepOptions(start_to_close_timeout=timedelta(minutes=2), retry_policy=STEP_RETRY),
    "passage_similarity": StepOptions(start_to_close_timeout=timedelta(minutes=1), retry_policy=STEP_RETRY),
    "index_stats": StepOptions(start_to_close_timeout=timedelta(minutes=1), retry_policy=STEP_RETRY),
    # LLM: planning (breaker and budget reads, prompt storage, cache lookup) is local; the request
    # itself runs on the provider's queue with the provider's own retry policy (keel.llm).
    "llm_prepare": dataclasses.replace(_local, retry_policy=RetryPolicy(maximum_attempts=3)),
    "llm_request": StepOptions(local=False),
    "llm_finish": dataclasses.replace(_local, retry_policy=RetryPolicy(maximum_attempts=2)),
}
