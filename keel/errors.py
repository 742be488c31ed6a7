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
    └── LLMError
        ├── LLMRequestRejected (non-retryable: 400/401/403/404/422)
        ├── LLMRateLimited     (retryable, honours Retry-After)
        ├── LLMUnavailable     (retryable: 5xx, timeouts, connection errors)
        └── LLMBadOutput       (retryable: malformed body / empty content)
"""

from __future__ import annotations

from datetime import timedelta


class KeelError(Exception):
    retryable: bool = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadDocument(KeelError):
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


class MissingTenant(KeelError):
    retryable = False


class InvalidFilter(KeelError):
    """A search filter that cannot mean anything (a malformed date, an empty range)."""

    retryable = False


class LLMError(KeelError):
    pass


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


def to_application_error(err: KeelError):
    """The Temporal form of a Keel error: type name, retryability and server-advised delay."""
    from temporalio.exceptions import ApplicationError

    return ApplicationError(
        err.message,
        type=type(err).__name__,
        non_retryable=not err.retryable,
        next_retry_delay=timedelta(seconds=err.retry_after) if err.retry_after else None,
    )
