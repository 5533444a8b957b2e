"""One deadline object with named parts: per engine request, per item, per batch.

``Deadline`` is the configuration (seconds, like ``httpx.Timeout``); ``Expiry`` is a point in
time computed from it once, when the item or the batch starts, and handed down to every
``generate()`` call (``GenerationRequest.expiry``) so that retries and parse rounds share
one clock instead of each restarting its own.

Example:
    >>> from grm_plugin.deadline import Deadline, Expiry
    >>> d = Deadline(request=30, item=120, batch=600)
    >>> d.request, d.item, d.batch
    (30.0, 120.0, 600.0)
    >>> Expiry.after(None).remaining() is None  # no limit
    True
    >>> e = Expiry.after(60).sooner(Expiry.after(5))
    >>> 0 < e.remaining() <= 5
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: seconds one request to a judge server may take (one try; each retry gets a fresh one)
DEFAULT_REQUEST_S = 120.0


class Deadline(BaseModel):
    """Time limits, each in seconds (None: no limit of that kind).

    - ``request``: one engine request (one HTTP call to a judge server, per try).
    - ``item``: one item from its start to its result, engine retries and parse-retry rounds
      included; the wait for a concurrency slot counts too.
    - ``batch``: one ``score_batch`` call (one GRPO group or training step). When it passes,
      the items judged so far are returned and the others get a failed result of kind
      ``timeout`` (flagged ``timeout``): one stuck request never holds a step.
    """

    model_config = ConfigDict(extra="forbid")

    request: float | None = Field(
        DEFAULT_REQUEST_S, gt=0, description="seconds per engine request (per try)"
    )
    item: float | None = Field(
        None, gt=0, description="seconds per item, retries included (None: no item limit)"
    )
    batch: float | None = Field(
        None, gt=0, description="seconds per score_batch call / group (None: no batch limit)"
    )

    @model_validator(mode="before")
    @classmethod
    def _named_parts(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            raise ValueError(
                f"a deadline has named parts: give {{request: ..., item: ..., batch: ...}} "
                f"(seconds), e.g. {{item: {data}}} for {data} s per item, not a bare {data}"
            )
        return data


@dataclass(frozen=True)
class Expiry:
    """A moment on the monotonic clock after which work must stop (``at`` None: never)."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Expiry:
        """The moment ``seconds`` from now (never if None)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (<= 0 once passed), or None without a limit."""
        return None if self.at is None else self.at - time.monotonic()

    def passed(self) -> bool:
        """True once the moment has come."""
        return self.at is not None and time.monotonic() >= self.at

    def sooner(self, other: Expiry) -> Expiry:
        """Whichever of the two comes first."""
        if self.at is None:
            return other
        if other.at is None:
            return self
        return self if self.at <= other.at else other

    def later(self, other: Expiry) -> Expiry:
        """Whichever of the two comes last (never if either never comes): the bound of work
        shared by several waiters, each of whom still stops at its own expiry.

        >>> Expiry(5.0).later(Expiry(9.0)).at, Expiry(5.0).later(NEVER).at
        (9.0, None)
        """
        if self.at is None or other.at is None:
            return NEVER
        return self if self.at >= other.at else other


#: the expiry that never comes
NEVER = Expiry()


def total_bound(limit: Deadline | float | None, default: float) -> float:
    """Seconds from an item's arrival to its answer, *everything* included: a group window's
    wait for the other responses, the wait for a judging slot, the judgment. The one rule for
    every way in (the server's ``deadline`` setting, verl's samples): a group window is spent
    out of this bound, never added to it, so the configured number is the longest wait.

    ``limit``: a judge's ``Deadline`` (its ``batch`` limit, else its ``item`` limit), or a
    number of seconds; ``default`` when it sets none.

    >>> total_bound(Deadline(batch=8, item=30), default=150)
    8.0
    >>> total_bound(Deadline(item=30), default=150), total_bound(Deadline(), default=150)
    (30.0, 150)
    >>> total_bound(60.0, default=150), total_bound(None, default=150)
    (60.0, 150)
    """
    if isinstance(limit, Deadline):
        limit = limit.batch if limit.batch is not None else limit.item
    return default if limit is None else limit


def cap(timeout: float | None, expiry: Expiry) -> float | None:
    """``timeout`` shortened to what is left before ``expiry`` (None when neither limits).

    >>> cap(None, Expiry()) is None
    True
    >>> cap(30.0, Expiry.after(None))
    30.0
    """
    left = expiry.remaining()
    if left is None:
        return timeout
    left = max(left, 0.0)
    return left if timeout is None else min(timeout, left)
