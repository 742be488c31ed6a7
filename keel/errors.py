"""Keel's exception hierarchy, classified once.

Library code (``ingestion/``, ``retrieval/``, LLM client) raises these. Activities convert them
with :func:`to_application_error`, and the workflows' retry policies list
:data:`NON_RETRYABLE` so bad input fails fast with a readable reason instead of retrying.

    KeelError
    ├── BadDocument            (non-retryable: the input itself is wrong)
    │   ├── EmptyDocument
    │   ├── UnsupportedFormat
    │   ├── InvalidEncoding
    │   ├── BinaryContent
    │   ├── CorruptDocument
    │   └── DocumentTooLarge
    ├── MissingTenant          (non-retryable)
    ├── InvalidFilter          (non-retryable: malformed date, empty range)
    ├── InvalidRequest         (non-retryable: a call that cannot succeed as written)
    ├── BudgetExceeded         (non-retryable: a tenant's budget is spent, no budget provider)
    └── LLMError               (carries the tokens the failed attempt may have been billed for)
        ├── LLMRequestRejected (non-retryable: 400/401/403/404/422)
        ├── LLMRateLimited     (retryable, honours Retry-After; non-retryable past the provider's
        │                       max_retry_after_seconds, so the chain moves on instead of waiting)
        ├── LLMUnavailable     (retryable: 5xx, 529, timeouts, connection errors)
        └── LLMBadOutput       (retryable: malformed body)

Retryable LLM errors without a ``Retry-After`` wait an exponential backoff with jitter
(:data:`LLM_BACKOFF`), passed to Temporal as ``next_retry_delay``: Temporal does the retrying.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


class KeelError(Exception):
    """The root of Keel's errors; ``retryable`` says whether Temporal should try the step again.

    >>> try:
    ...     raise EmptyDocument("a.txt: the file is empty (0 bytes)")
    ... except BadDocument as e:
    ...     print(type(e).__name__, e.retryable, e.message)
    EmptyDocument False a.txt: the file is empty (0 bytes)
    """

    retryable: bool = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadDocument(KeelError):
    """The input itself is wrong: retrying cannot help, so the step fails at once.

    >>> "CorruptDocument" in NON_RETRYABLE and issubclass(CorruptDocument, BadDocument)
    True
    """

    retryable = False


class EmptyDocument(BadDocument):
    pass


class UnsupportedFormat(BadDocument):
    pass


class InvalidEncoding(BadDocument):
    pass


class BinaryContent(BadDocument):
    pass


class CorruptDocument(BadDocument):
    pass


class DocumentTooLarge(BadDocument):
    pass


class DocumentTooComplex(BadDocument):
    """A document whose structure no real document has (HTML nested thousands of levels deep):
    refused before a parser would recurse through it."""


class EncryptedDocument(BadDocument):
    """A password-protected file (an encrypted PDF): Keel cannot read it without the password."""


class MissingTenant(KeelError):
    """An index read or write without a tenant: every read is inside one tenant.

    >>> from keel.retrieval.store import _require_tenant
    >>> _require_tenant("")
    Traceback (most recent call last):
    keel.errors.MissingTenant: a tenant is required for every index read and write
    """

    retryable = False


class InvalidFilter(KeelError):
    """A search filter that cannot mean anything (a malformed date, an empty range).

    >>> from keel.types import Filters
    >>> Filters(date_from="yesterday").conditions()
    Traceback (most recent call last):
    keel.errors.InvalidFilter: not an ISO date (YYYY-MM-DD): 'yesterday'
    """

    retryable = False


class InvalidRequest(KeelError):
    """A call that cannot succeed as written (an empty prompt, an unknown prompt version).

    Raised in workflow code, it fails the run at once with this type (``KeelPlugin`` registers
    Keel's errors as workflow failures) instead of a workflow task that retries forever.

    >>> from keel.llm.prompts import answer_messages
    >>> answer_messages("answer-v9", "q", None)
    Traceback (most recent call last):
    keel.errors.InvalidRequest: unknown prompt_version 'answer-v9'; known: answer-v1, answer-v2, answer-v3
    """

    retryable = False


class PathNotAllowed(KeelError):
    """A path ingest may not read: outside the allowed roots (``KeelSettings.ingest_roots``, or
    by default the paths the caller named), a symlink pointing outside them, or one with ``..``.
    Nothing of it is read; the other files of the ingest go on.

    >>> from pathlib import Path
    >>> from keel.activities.ingest import check_path
    >>> check_path(Path("/etc/passwd"), [Path("/srv/docs")])
    Traceback (most recent call last):
    keel.errors.PathNotAllowed: /etc/passwd: outside the allowed roots (/srv/docs)
    """

    retryable = False


class PermissionDenied(KeelError):
    """The caller may not act for this tenant: it holds no credential for it, or a payload was
    not authenticated by the key of the tenant it names (see ``keel.keys``). Raised by the
    client before anything is sent, or by the worker before any step runs.

    >>> from pathlib import Path
    >>> from keel.keys import Keyring
    >>> Keyring(Path("/nonexistent/keyring.json")).payload_key("acme")
    Traceback (most recent call last):
    keel.errors.PermissionDenied: this caller holds no credential for tenant 'acme' (keyring /nonexistent/keyring.json)
    """

    retryable = False


class BudgetExceeded(KeelError):
    """The tenant's period budget is spent and no ``budget_fallback`` provider is configured.

    Inside a workflow :func:`keel.llm.complete` raises it as a non-retryable
    ``ApplicationError`` of this type name, so the run fails visibly in the UI.

    >>> BudgetExceeded.__name__ in NON_RETRYABLE
    True
    """

    retryable = False


class LLMError(KeelError):
    """A failed LLM attempt, with the tokens it may have been billed for.

    ``usage_estimated`` is True when the provider did not report usage but may have run the
    model (a timeout or dropped connection after the request was sent, an unreadable 200 body):
    the prompt is then counted at an estimated size. Error statuses (429, 5xx, 4xx) bill nothing.

    >>> e = LLMRateLimited("LLM rate limited (429)", retry_after=2.0)
    >>> e.retryable, e.retry_after, LLMRequestRejected("401").retryable
    (True, 2.0, False)
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        usage_estimated: bool = False,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.usage_estimated = usage_estimated


class LLMRequestRejected(LLMError):
    retryable = False


class LLMRateLimited(LLMError):
    pass


class LLMUnavailable(LLMError):
    pass


class LLMBadOutput(LLMError):
    pass


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


NON_RETRYABLE: list[str] = sorted(
    c.__name__ for c in _all_subclasses(KeelError) if not c.retryable
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": between half and all of the exponential delay,
    so retries of many runs that failed together do not arrive together."""

    initial_seconds: float = 1.0
    coefficient: float = 2.0
    maximum_seconds: float = 30.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Seconds before retry number ``attempt`` (1 = after the first failure); jitter in [0, 1)."""
        ceiling = min(self.maximum_seconds, self.initial_seconds * self.coefficient ** max(0, attempt - 1))
        return ceiling * (0.5 + jitter / 2)


LLM_BACKOFF = Backoff()


def to_application_error(
    err: KeelError,
    *,
    attempt: int | None = None,
    max_retry_after: float | None = None,
    details: tuple = (),
):
    """The Temporal form of a Keel error: type name, retryability and the delay before a retry.

    :param attempt: the failed attempt's number; when given, a retryable error without a
        server-advised delay waits :data:`LLM_BACKOFF` (with jitter) instead of the policy's
        fixed schedule.
    :param max_retry_after: a ``Retry-After`` longer than this makes the error non-retryable
        for this call: waiting minutes for one provider is worse than moving to the next.
    :param details: attached to the failure (e.g. the attempt's usage record).
    """
    from temporalio.exceptions import ApplicationError

    non_retryable = not err.retryable
    message = err.message
    delay = None
    if err.retry_after:
        if max_retry_after is not None and err.retry_after > max_retry_after:
            non_retryable = True
            message += f" (Retry-After {err.retry_after:.0f}s exceeds {max_retry_after:.0f}s: not waiting)"
        else:
            delay = err.retry_after
    elif err.retryable and attempt is not None:
        delay = LLM_BACKOFF.delay(attempt, random.random())
    return ApplicationError(
        message,
        *details,
        type=type(err).__name__,
        non_retryable=non_retryable,
        next_retry_delay=timedelta(seconds=delay) if delay else None,
    )


def failure_reason(err: BaseException) -> tuple[str, str]:
    """(error type, message) of the innermost cause of a child workflow or activity failure."""
    from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError

    while isinstance(err, (ChildWorkflowError, ActivityError)) and err.cause is not None:
        err = err.cause
    kind = err.type if isinstance(err, ApplicationError) and err.type else type(err).__name__
    return kind, err.message if isinstance(err, FailureError) else str(err)


def from_application_error(err: BaseException) -> BaseException:
    """The Keel error an ``ApplicationError`` stands for (by type name), else ``err`` itself:
    steps called outside a workflow raise the same typed errors as the libraries."""
    from temporalio.exceptions import ApplicationError

    if isinstance(err, ApplicationError):
        for cls in [KeelError, *_all_subclasses(KeelError)]:
            if cls.__name__ == err.type:
                return cls(err.message)
    return err
