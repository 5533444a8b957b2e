"""Faults the simulated judge server can inject, per request or at random by rate.

Example:
    >>> plan = FaultPlan(rates={"rate_limit": 0.5}, seed=1)
    >>> picks = [plan.draw() for _ in range(1000)]
    >>> 400 < sum(f is not None and f.kind is FaultKind.RATE_LIMIT for f in picks) < 600
    True
    >>> Fault(FaultKind.SERVER_ERROR).status
    500
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator


class FaultKind(str, Enum):
    """What a faulty request gets instead of a normal answer."""

    #: the answer comes, ``delay`` seconds late
    LATENCY_SPIKE = "latency_spike"
    #: HTTP 429 with ``Retry-After: retry_after`` (before any work is done)
    RATE_LIMIT = "rate_limit"
    #: HTTP 500 (before any work is done)
    SERVER_ERROR = "server_error"
    #: the connection is closed without a byte of answer
    DROP = "drop"
    #: no answer at all until ``delay`` seconds (bounded), then the connection is closed
    HANG = "hang"
    #: the work is done, but only the first half of the JSON body is sent
    TRUNCATE = "truncate"


@dataclass(frozen=True)
class Fault:
    """One request's fault. ``delay`` is seconds for spikes and hangs."""

    kind: FaultKind
    delay: float = 1.0
    retry_after: float = 1.0

    @property
    def status(self) -> int:
        """HTTP status for the status faults (200 otherwise)."""
        return {FaultKind.RATE_LIMIT: 429, FaultKind.SERVER_ERROR: 500}.get(self.kind, 200)


class FaultPlan(BaseModel):
    """Faults by rate (probability per chat request, drawn from a seeded generator) plus a
    queue of faults for the next requests (``inject``), which goes first."""

    model_config = ConfigDict(extra="forbid")

    rates: dict[FaultKind, float] = Field(default_factory=dict, description="kind -> probability")
    spike_delay: float = Field(1.0, ge=0, le=60, description="seconds added by a latency spike")
    hang_seconds: float = Field(30.0, ge=0, le=600, description="how long a hang lasts at most")
    retry_after: float = Field(1.0, ge=0, le=3600, description="Retry-After of a 429, seconds")
    seed: int | None = Field(0, description="seed of the rate draws (None: random)")
    _rng: random.Random = PrivateAttr()
    _queue: deque = PrivateAttr(default_factory=deque)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("rates")
    @classmethod
    def _probabilities(cls, v: dict[FaultKind, float]) -> dict[FaultKind, float]:
        if any(p < 0 or p > 1 for p in v.values()) or sum(v.values()) > 1:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, got {v}")
        return v

    def model_post_init(self, context: object) -> None:
        self._rng = random.Random(self.seed)

    def fault(self, kind: FaultKind) -> Fault:
        """A fault of this kind with the plan's delays."""
        delay = self.hang_seconds if kind is FaultKind.HANG else self.spike_delay
        return Fault(kind, delay=delay, retry_after=self.retry_after)

    def inject(self, fault: Fault | FaultKind, times: int = 1) -> None:
        """The next ``times`` chat requests get ``fault`` (thread-safe)."""
        if isinstance(fault, FaultKind):
            fault = self.fault(fault)
        with self._lock:
            self._queue.extend([fault] * times)

    def draw(self) -> Fault | None:
        """The fault for the next request, or None."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            x = self._rng.random()
        for kind, p in self.rates.items():
            if x < p:
                return self.fault(kind)
            x -= p
        return None
