"""What an engine raises, one class per kind of failure, and the failure kind each one means.

Each engine turns its library's exceptions into these once, at its boundary, with
``map_exceptions`` (httpx's ``_exceptions.py`` is the model); the core then reads the kind of a
failure from the class (``failure_kind``), never from messages or ``isinstance`` ladders.

Example:
    >>> failure_kind(EngineTimeout("no answer within 3.0s")).value
    'timeout'
    >>> failure_kind(EngineServerError("HTTP 500")).value
    'engine'
    >>> failure_kind(PromptTooLongError("the prompt alone leaves no room")).value
    'bad_input'
    >>> with map_exceptions({KeyError: EngineBadResponse}):
    ...     {}["choices"]
    Traceback (most recent call last):
    ...
    grm_plugin.engines.errors.EngineBadResponse: KeyError: 'choices'
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..results import FailureKind


class EngineError(RuntimeError):
    """The engine could not produce text (server down, timeout, bad answer...)."""

    #: True when another try may succeed (the engine's retry loop reads it)
    retryable: bool = False
    #: seconds the server asked us to wait before the next try (``Retry-After``), if it did
    retry_after: float | None = None


class EngineTimeout(EngineError, TimeoutError):
    """No answer within the time a try (``Deadline.request``) or the item had."""

    retryable = True


class EngineConnectionError(EngineError):
    """The server could not be reached, or dropped the connection before answering."""

    retryable = True


class EngineRateLimited(EngineError):
    """The server refused for now (HTTP 429); ``retry_after``: seconds it asked us to wait."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineServerError(EngineError):
    """The server failed (HTTP 5xx)."""

    retryable = True


class EngineBadResponse(EngineError):
    """The server answered, but not with a completion (not JSON, no choices, non-text...)."""

    retryable = True


class EngineRejected(EngineError):
    """The server refused the request itself (HTTP 4xx other than 429): retrying cannot help."""


class PromptTooLongError(ValueError):
    """The conversation alone does not fit the engine's context: an input problem."""


class EnginePromptTooLong(EngineRejected, PromptTooLongError):
    """The server refused the prompt as longer than its context (the caller's input)."""


#: class -> failure kind; the first class of an exception's MRO found here decides
_KINDS: dict[type[BaseException], FailureKind] = {
    EnginePromptTooLong: FailureKind.BAD_INPUT,
    PromptTooLongError: FailureKind.BAD_INPUT,
    EngineTimeout: FailureKind.TIMEOUT,
    EngineError: FailureKind.ENGINE,
    TimeoutError: FailureKind.TIMEOUT,
    asyncio.TimeoutError: FailureKind.TIMEOUT,  # the same class from 3.11, not before
}


def failure_kind(error: BaseException) -> FailureKind:
    """The kind of failure ``error`` stands for (``ENGINE`` for anything not listed)."""
    for cls in type(error).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            return kind
    return FailureKind.ENGINE


@contextmanager
def map_exceptions(
    mapping: Mapping[type[BaseException], type[EngineError]], context: str = ""
) -> Iterator[None]:
    """Re-raise an exception of a ``mapping`` key as its value (the first key that matches, in
    order), chained, with ``context`` (e.g. the server's URL) before the original's
    ``Type: message``. ``EngineError`` and anything unmapped pass through unchanged."""
    try:
        yield
    except EngineError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                prefix = f"{context}: " if context else ""
                raise target(f"{prefix}{type(exc).__name__}: {exc}") from exc
        raise
