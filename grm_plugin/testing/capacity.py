"""A continuous-batching server's capacity, as a model whose saturated throughput is known.

A request goes through two stages, each a processor-sharing resource that runs in real time
(asyncio timers): **prefill** (prompt tokens per second shared by every sequence being
prefilled) and **decode** (output tokens per second shared by the running batch of at most
``max_batch`` sequences; one sequence alone is limited by ``decode_tps_per_seq``, as a GPU's
decode is memory-bound and gains throughput only from batching). A fixed ``request_overhead``
(HTTP, tokenization, scheduling) adds latency without using capacity. With ``prefix_cache``,
prompt blocks already seen are not prefilled again and the ``n`` samples of one request share
one prefill; without it every sample pays for its own prefill, as k separate requests would.

Because the stages are independent, the saturated throughput is the slower stage's:

    samples/s = min(prefill_tps / prefill tokens per sample,
                    min(decode_tps, max_batch * decode_tps_per_seq) / output tokens per sample)

Example:
    >>> cap = CapacityModel(decode_tps=16_000, decode_tps_per_seq=1_000, output_tokens=64)
    >>> cap.ceiling(prefill_tokens_per_sample=300)
    250.0
    >>> round(cap.single_latency(prompt_tokens=300), 4)  # one request alone
    0.075
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
from collections import OrderedDict

from pydantic import BaseModel, ConfigDict, Field


class CapacityModel(BaseModel):
    """What one simulated server replica can do. All rates are per replica."""

    model_config = ConfigDict(extra="forbid")

    prefill_tps: float = Field(200_000.0, gt=0, description="prompt tokens/s, all sequences")
    prefill_tps_per_seq: float = Field(50_000.0, gt=0, description="prompt tokens/s, one sequence")
    decode_tps: float = Field(16_000.0, gt=0, description="output tokens/s of the whole batch")
    decode_tps_per_seq: float = Field(1_000.0, gt=0, description="output tokens/s, one sequence")
    max_batch: int = Field(64, ge=1, description="sequences decoding at once; others queue")
    request_overhead: float = Field(0.005, ge=0, description="seconds per request, no capacity")
    output_tokens: int = Field(64, ge=1, description="tokens per sample (capped by max_tokens)")
    chars_per_token: float = Field(4.0, gt=0, description="prompt length -> tokens")
    prefix_cache: bool = Field(True, description="share prefill across n and repeated prefixes")
    block_tokens: int = Field(16, ge=1, description="prefix-cache block size in tokens")
    cache_blocks: int = Field(200_000, ge=0, description="prefix-cache capacity (LRU) in blocks")

    @property
    def decode_capacity(self) -> float:
        """Output tokens/s of a full batch."""
        return min(self.decode_tps, self.max_batch * self.decode_tps_per_seq)

    def output_len(self, max_tokens: int | None) -> int:
        """Tokens one sample generates for a request with this ``max_tokens``."""
        return (
            self.output_tokens
            if max_tokens is None
            else max(1, min(max_tokens, self.output_tokens))
        )

    def ceiling(self, prefill_tokens_per_sample: float, output_tokens: int | None = None) -> float:
        """Saturated samples (judgments) per second for this work."""
        out = self.output_tokens if output_tokens is None else output_tokens
        prefill_bound = (
            math.inf
            if prefill_tokens_per_sample <= 0
            else self.prefill_tps / prefill_tokens_per_sample
        )
        return min(prefill_bound, self.decode_capacity / out)

    def single_latency(self, prompt_tokens: float, output_tokens: int | None = None) -> float:
        """Seconds for one request with one sample on an idle server."""
        out = self.output_tokens if output_tokens is None else output_tokens
        prefill = prompt_tokens / min(self.prefill_tps, self.prefill_tps_per_seq)
        return self.request_overhead + prefill + out / min(self.decode_tps, self.decode_tps_per_seq)

    def tokens(self, text: str) -> int:
        """Approximate token count of a prompt text."""
        return max(1, math.ceil(len(text) / self.chars_per_token))


class SharedStage:
    """Processor sharing in real time: ``total`` units/s split equally between the running
    jobs, each capped at ``per_job``; at most ``slots`` jobs run, the others wait in order.

    Every running job progresses at the same rate, so one virtual clock (service given to each
    job so far) and a heap of finish points make each arrival or completion O(log n).
    """

    def __init__(self, total: float, per_job: float, slots: int | None = None) -> None:
        self.total, self.per_job, self.slots = total, per_job, slots
        self._virtual = 0.0
        self._last = 0.0
        self._heap: list[tuple[float, int, asyncio.Future]] = []
        self._waiting: list[tuple[float, int, asyncio.Future]] = []
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.busy_time = 0.0
        #: integral of the number of running jobs over time: / elapsed = the mean batch
        self.job_seconds = 0.0

    @property
    def running(self) -> int:
        return len(self._heap)

    def _rate(self) -> float:
        n = len(self._heap)
        return 0.0 if n == 0 else min(self.per_job, self.total / n)

    def _advance(self, now: float) -> None:
        if self._heap:
            self._virtual += self._rate() * (now - self._last)
            self.busy_time += now - self._last
            self.job_seconds += len(self._heap) * (now - self._last)
        self._last = now

    async def run(self, work: float) -> None:
        """Wait until ``work`` units of service have been given to this job."""
        loop = asyncio.get_running_loop()
        self._advance(loop.time())
        fut = loop.create_future()
        job = (work, next(self._ids), fut)
        if self.slots is None or len(self._heap) < self.slots:
            heapq.heappush(self._heap, (self._virtual + work, job[1], fut))
        else:
            self._waiting.append(job)
        self._reschedule(loop)
        await fut

    def _reschedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            delay = max(0.0, (self._heap[0][0] - self._virtual) / self._rate())
            self._timer = loop.call_at(self._last + delay, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._advance(loop.time())
        while self._heap and self._heap[0][0] <= self._virtual + 1e-9:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)
        while self._waiting and (self.slots is None or len(self._heap) < self.slots):
            work, job_id, fut = self._waiting.pop(0)
            if not fut.done():  # a cancelled request that never started costs nothing
                heapq.heappush(self._heap, (self._virtual + work, job_id, fut))
        self._reschedule(loop)


class PrefixCache:
    """Block-hash prefix cache (as in vLLM): a prompt's leading blocks already seen are free."""

    def __init__(self, block_chars: int, capacity: int) -> None:
        self.block_chars, self.capacity = block_chars, capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def cached_chars(self, text: str) -> int:
        """Characters of ``text``'s prefix that were cached; the text's blocks are then added."""
        h = hashlib.blake2b(digest_size=16)
        hit, still_hitting = 0, True
        for start in range(0, len(text) - self.block_chars + 1, self.block_chars):
            h.update(text[start : start + self.block_chars].encode())
            key = h.copy().digest()
            if still_hitting and key in self._blocks:
                hit += self.block_chars
                self._blocks.move_to_end(key)
                continue
            still_hitting = False
            self._blocks[key] = None
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        return hit


class ReplicaCapacity:
    """The stages of one replica and the work done on them."""

    def __init__(self, model: CapacityModel) -> None:
        self.model = model
        self.prefill = SharedStage(model.prefill_tps, model.prefill_tps_per_seq)
        self.decode = SharedStage(model.decode_tps, model.decode_tps_per_seq, model.max_batch)
        self.cache = PrefixCache(
            max(1, int(model.block_tokens * model.chars_per_token)), model.cache_blocks
        )
        self.prefill_tokens = 0
        self.cached_tokens = 0
        self.decode_tokens = 0
        self.samples = 0

    async def serve(self, prompt: str, n: int, max_tokens: int | None) -> None:
        """Spend the time a request with ``n`` samples takes on this replica."""
        m = self.model
        await asyncio.sleep(m.request_overhead)
        total = m.tokens(prompt)
        if m.prefix_cache:  # one prefill for all n samples, minus the cached prefix
            cached = min(total - 1, int(self.cache.cached_chars(prompt) / m.chars_per_token))
            jobs = [total - cached]
        else:  # as if the n samples were n separate requests
            cached, jobs = 0, [total] * n
        self.prefill_tokens += sum(jobs)
        self.cached_tokens += cached
        await asyncio.gather(*(self.prefill.run(w) for w in jobs))
        out = m.output_len(max_tokens)
        self.decode_tokens += out * n
        self.samples += n
        await asyncio.gather(*(self.decode.run(out) for _ in range(n)))
