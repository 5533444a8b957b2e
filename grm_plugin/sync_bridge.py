"""The asyncio boundary: sync callers run coroutines on one shared background loop
(``run_sync``), coroutines run under an item's deadline (``with_timeout``) and a batch's
items a bounded window at a time under the batch's (``run_windowed``), and a caller's cancel
is told apart from an engine's stray ``CancelledError`` (``cancelled_by_caller``).

Example:
    >>> async def answer() -> int:
    ...     return 42
    >>> run_sync(answer())
    42
    >>> from grm_plugin.deadline import NEVER
    >>> run_sync(with_timeout(answer(), NEVER))
    42
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .deadline import Expiry
from .engines.errors import EngineTimeout

T = TypeVar("T")


class _BackgroundLoop:
    """One event loop in a daemon thread, shared by every sync call in the process, so engine
    clients, connection pools and concurrency limits are shared too (one loop per call would
    give each call its own)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            # a fork()ed child inherits the loop object but not the thread that runs it
            stale = cls._pid != os.getpid()
            if stale or cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="grm-loop").start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop

    @classmethod
    def _after_fork_in_child(cls) -> None:
        # the lock may have been held by another thread of the parent at fork time
        cls._lock = threading.Lock()
        cls._loop, cls._pid = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BackgroundLoop._after_fork_in_child)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (also from a thread with a running loop)."""
    loop = _BackgroundLoop.get()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("sync API called from grm-plugin's own event loop: use the async API")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def with_timeout(coro: Coroutine[Any, Any, T], expiry: Expiry) -> T:
    """``coro``'s result, or ``EngineTimeout`` when ``expiry`` passes first."""
    timeout = expiry.remaining()
    if timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, max(timeout, 0.0))
    except asyncio.TimeoutError:
        raise EngineTimeout(
            f"item deadline reached ({max(timeout, 0.0):.1f}s were left for this round)"
        ) from None


def cancelled_by_caller() -> bool:
    """True when the running task itself is being cancelled (not a stray CancelledError that
    an engine raised on its own, which is that engine's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_windowed(
    one: Callable[[int], Awaitable[tuple[int, T]]],
    total: int,
    window: int,
    batch: Expiry,
    landed: Callable[[int, T], None],
) -> None:
    """Run ``one(i)`` for each i < ``total``, at most ``window`` at once, handing each finished
    ``(i, result)`` to ``landed``; at ``batch``'s expiry (or the caller's cancel) whatever is
    still running is cancelled, and items that finished as it struck still land.

    >>> from grm_plugin.deadline import NEVER
    >>> async def square(i: int) -> tuple[int, int]:
    ...     return i, i * i
    >>> got = {}
    >>> run_sync(run_windowed(square, 5, 2, NEVER, got.__setitem__))
    >>> sorted(got.items())
    [(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)]
    """
    running: set[asyncio.Future] = set()
    done: asyncio.Queue[asyncio.Future] = asyncio.Queue()
    admitted = 0

    def admit() -> None:
        nonlocal admitted
        task = asyncio.ensure_future(one(admitted))
        admitted += 1
        running.add(task)
        task.add_done_callback(done.put_nowait)

    async def collect() -> None:
        # one callback per item and one timeout per batch: a loop of asyncio.wait
        # (FIRST_COMPLETED) re-registered one on every pending task per wake-up (quadratic)
        while admitted < total and len(running) < window:
            admit()
        for _ in range(total):
            task = await done.get()
            running.discard(task)
            landed(*task.result())
            if admitted < total:
                admit()

    try:
        left = batch.remaining()
        if left is None:
            await collect()
        else:
            await asyncio.wait_for(collect(), max(left, 0.0))
    except asyncio.TimeoutError:
        pass  # the batch deadline: what has not landed by now is the caller's to report
    finally:
        # on the batch deadline, and when the caller cancels us: nothing keeps running
        for task in running:
            task.cancel()
    while not done.empty():  # finished as the deadline struck, before it was collected
        task = done.get_nowait()
        if not task.cancelled() and task.exception() is None:
            landed(*task.result())
