"""Coalesce concurrent generation requests into batches for engines that run a batch at once.

Requests arrive from any event loop or thread; a single worker thread owns the model, collects
what arrives within ``max_wait`` seconds (up to ``max_rows`` sequences) and runs it as one batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from .base import GenerationRequest

BatchFn = Callable[[Sequence[GenerationRequest]], list[list[str]]]


class MicroBatcher:
    """Run ``batch_fn`` on batches of requests in one worker thread."""

    def __init__(self, batch_fn: BatchFn, max_rows: int, max_wait: float = 0.01) -> None:
        self._batch_fn = batch_fn
        self._max_rows = max_rows
        self._max_wait = max_wait
        self._queue: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, daemon=True, name="grm-batcher")
        self._thread.start()

    async def submit(self, request: GenerationRequest) -> list[str]:
        fut: Future = Future()
        self._queue.put((request, fut))
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = first[0].n
            while rows < self._max_rows:
                try:
                    nxt = self._queue.get(timeout=self._max_wait)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
                rows += nxt[0].n
            self._run(batch)

    def _run(self, batch: list[tuple[GenerationRequest, Future]]) -> None:
        # one generate() call needs one temperature: group by it
        by_temp: dict[float, list[tuple[GenerationRequest, Future]]] = {}
        for item in batch:
            by_temp.setdefault(item[0].temperature, []).append(item)
        for items in by_temp.values():
            try:
                outs = self._batch_fn([r for r, _ in items])
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, fut in items:
                    fut.set_exception(e)
                continue
            for (_, fut), out in zip(items, outs, strict=True):
                fut.set_result(out)
