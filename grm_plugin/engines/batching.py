"""Coalesce concurrent generation requests into batches for engines that run a batch at once.

Requests arrive from any event loop or thread; a single worker thread owns the model, collects
what arrives within ``max_wait`` seconds (up to ``max_rows`` sequences) and runs it as one batch.

A caller that stops waiting (its deadline passed, its task was cancelled) cancels its future:
the worker skips it if it has not started, tells ``batch_fn`` through ``Job.cancelled`` so that
a running generation can stop early, and never fails on the late result. The worker survives
any exception; if it is gone anyway, ``submit`` fails at once and ``health`` says why.

Example:
    >>> import asyncio
    >>> from grm_plugin.engines.base import GenerationRequest
    >>> b = MicroBatcher(lambda jobs: [["x"] * j.request.n for j in jobs], max_rows=4)
    >>> asyncio.run(b.submit(GenerationRequest([{"role": "user", "content": "hi"}], n=2)))
    ['x', 'x']
    >>> b.health().ok
    True
    >>> b.close()
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from .base import EngineError, EngineHealth, GenerationRequest
from .errors import EngineTimeout, map_exceptions

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request in a batch, with the future its caller waits on."""

    request: GenerationRequest
    future: Future = field(default_factory=Future)

    @property
    def cancelled(self) -> bool:
        """True once nobody waits for the result any more."""
        return self.future.cancelled()


BatchFn = Callable[[Sequence[Job]], list[list[str]]]

#: what a local model's batch raises -> what its callers get: anything a batch raises is the
#: engine's failure (out of memory, a CUDA error, a template the tokenizer rejects)
LOCAL_ERRORS: dict[type[BaseException], type[EngineError]] = {
    TimeoutError: EngineTimeout,
    asyncio.TimeoutError: EngineTimeout,  # the same class from 3.11, not before
    Exception: EngineError,
}


class MicroBatcher:
    """Run ``batch_fn`` on batches of jobs in one worker thread."""

    def __init__(
        self,
        batch_fn: BatchFn,
        max_rows: int,
        max_wait: float = 0.01,
        errors: Mapping[type[BaseException], type[EngineError]] = LOCAL_ERRORS,
    ) -> None:
        self._batch_fn = batch_fn
        self._errors = errors
        self._max_rows = max_rows
        self._max_wait = max_wait
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._closed = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._work, daemon=True, name="grm-batcher")
        self._thread.start()

    async def submit(self, request: GenerationRequest) -> list[str]:
        """Queue ``request`` and wait for its texts (EngineError if the worker is gone)."""
        problem = self.health()
        if not problem.ok:
            raise EngineError(f"local engine unavailable: {problem.reason}")
        job = Job(request)
        self._queue.put(job)
        if not self._thread.is_alive():
            self._fail_pending()  # it stopped between the check and the put
        # cancelling the awaiting task cancels job.future too (wrap_future chains them)
        return await asyncio.wrap_future(job.future)

    def health(self) -> EngineHealth:
        """ok while the worker thread runs; otherwise the reason it does not."""
        if self._closed:
            return EngineHealth(ok=False, reason="engine closed")
        if self._dead is not None:
            return EngineHealth(ok=False, reason=self._dead)
        if not self._thread.is_alive():
            return EngineHealth(ok=False, reason="batching worker thread is not running")
        return EngineHealth(ok=True)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)

    def _work(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                rows = first.request.n
                while rows < self._max_rows:
                    try:
                        nxt = self._queue.get(timeout=self._max_wait)
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)  # finish this batch, then stop
                        break
                    batch.append(nxt)
                    rows += nxt.request.n
                try:
                    self._run(batch)
                except BaseException as e:  # noqa: BLE001 - the worker must outlive any batch
                    error = EngineError(f"local engine batch failed: {type(e).__name__}: {e}")
                    for job in batch:
                        _settle(job.future, error=error)
                    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit...
                        self._dead = f"batching worker stopped: {type(e).__name__}: {e}"
                        log.error("local engine worker stopped: %r", e)
                        return
                    log.exception("local engine batch failed")
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        """Nobody will run what is still queued: fail it rather than leave callers waiting."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _settle(job.future, error=EngineError("local engine closed"))

    def _run(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.cancelled]  # callers gone before the start: skip
        # one generate() call needs one temperature: group by it
        by_temp: dict[float, list[Job]] = {}
        for job in live:
            by_temp.setdefault(job.request.temperature, []).append(job)
        for jobs in by_temp.values():
            try:
                with map_exceptions(self._errors, "local engine"):
                    outs = self._batch_fn(jobs)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for job in jobs:
                    _settle(job.future, error=e)
                continue
            for job, out in zip(jobs, outs, strict=True):
                _settle(job.future, result=out)


def _settle(
    fut: Future, result: list[str] | None = None, error: BaseException | None = None
) -> None:
    """Set a future's outcome unless its caller already gave up (cancelled it)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass  # cancelled in the meantime: the result has no reader
