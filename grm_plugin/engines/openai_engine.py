"""Judge through any OpenAI-compatible server with the official ``openai`` async client.

Example:
    >>> cfg = OpenAIEngineConfig(base_url="http://127.0.0.1:8000/v1")
    >>> eng = OpenAIEngine(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from dataclasses import dataclass, field

import openai

from ..config import OpenAIEngineConfig
from .base import EngineError, GenerationRequest, JudgeEngine

log = logging.getLogger(__name__)

_RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIResponseValidationError,
)


@dataclass
class _Replica:
    url: str
    outstanding: int = 0
    clients: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)


class OpenAIEngine(JudgeEngine):
    """Chat completions against one or more replicas, least outstanding requests first.

    ``n=k`` goes in one request when the server honours it (shared prompt prefix); a server that
    answers with fewer choices (e.g. ``transformers serve``) gets the rest as parallel requests,
    and is remembered as such. Retries with backoff (``Retry-After`` honoured) inside a total
    ``deadline`` per request; then ``EngineError``.
    """

    def __init__(self, config: OpenAIEngineConfig) -> None:
        self.config = config
        urls = [config.base_url] if isinstance(config.base_url, str) else list(config.base_url)
        self._replicas = [_Replica(u.rstrip("/")) for u in urls]
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._model: str | None = config.model
        self._native_n: bool | None = {"native": True, "parallel": False}.get(config.n_mode)
        self.context_window = config.context_window

    # per event loop: httpx connections and asyncio primitives must not cross loops
    def _client(self, replica: _Replica) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = replica.clients.get(loop)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=replica.url,
                api_key=self.config.api_key,
                max_retries=0,
                timeout=self.config.timeout,
            )
            replica.clients[loop] = client
        return client

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(self.config.concurrency)
        return sem

    def _pick(self) -> _Replica:
        low = min(r.outstanding for r in self._replicas)
        return random.choice([r for r in self._replicas if r.outstanding == low])

    async def _model_name(self, start: float) -> str:
        if self._model is None:
            # the item's start: listing models is part of the item's deadline
            page = await self._call(lambda c: c.models.list(), start)
            ids = [m.id for m in page.data]
            if not ids:
                raise EngineError("the server lists no models; set engine.model")
            self._model = ids[0]
        return self._model

    async def _call(self, fn, start: float):
        """Call ``fn(client)`` with retries until the deadline.

        The deadline counts from ``start`` (when the item began) and covers the wait for a
        concurrency slot too: a request queued behind a slow server must not outlive its item.
        """
        cfg = self.config
        attempt = 0
        while True:
            replica = self._pick()
            replica.outstanding += 1
            remaining = cfg.deadline - (time.monotonic() - start)
            try:
                return await asyncio.wait_for(
                    self._attempt(fn, replica, start), timeout=max(0.01, remaining)
                )
            except (*_RETRYABLE, asyncio.TimeoutError, json.JSONDecodeError) as e:
                # JSONDecodeError: a truncated or garbled body (proxy or server hiccup)
                err: Exception = e
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                raise EngineError(f"{replica.url}: HTTP {e.status_code}: {e.message}") from e
            finally:
                replica.outstanding -= 1
            attempt += 1
            delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())
            retry_after = _retry_after(err)
            if retry_after is not None:
                delay = retry_after
            remaining = cfg.deadline - (time.monotonic() - start)
            if attempt > cfg.max_retries or delay >= remaining:
                raise EngineError(
                    f"{replica.url}: {type(err).__name__}: {err} (after {attempt} tries, "
                    f"{time.monotonic() - start:.1f}s)"
                ) from err
            log.debug("retrying in %.2fs after %r", delay, err)
            await asyncio.sleep(delay)

    async def _attempt(self, fn, replica: _Replica, start: float):
        """One try: wait for a slot, then call with the per-request timeout (capped by what is
        left of the deadline once the slot is ours)."""
        async with self._semaphore():
            remaining = self.config.deadline - (time.monotonic() - start)
            return await asyncio.wait_for(
                fn(self._client(replica)), timeout=max(0.01, min(self.config.timeout, remaining))
            )

    async def _complete(self, request: GenerationRequest, n: int, start: float) -> list[str]:
        model = await self._model_name(start)
        kwargs = dict(
            model=model,
            messages=request.messages,
            n=n,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if self.config.extra_body:
            kwargs["extra_body"] = self.config.extra_body
        resp = await self._call(lambda c: c.chat.completions.create(**kwargs), start)
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise EngineError(f"malformed completion: no choices in {str(resp)[:200]!r}")
        return [(c.message.content or "") if c.message else "" for c in choices]

    async def generate(self, request: GenerationRequest) -> list[str]:
        start = time.monotonic()
        if request.n == 1 or self._native_n is False:
            outs = await asyncio.gather(
                *(self._complete(request, 1, start) for _ in range(request.n))
            )
            return [o[0] for o in outs]
        texts = await self._complete(request, request.n, start)
        if len(texts) >= request.n:
            self._native_n = True
            return texts[: request.n]
        if self._native_n is None:
            log.info(
                "server answered n=%d with %d choices: using parallel requests",
                request.n,
                len(texts),
            )
            self._native_n = False
        rest = await asyncio.gather(
            *(self._complete(request, 1, start) for _ in range(request.n - len(texts)))
        )
        return texts + [o[0] for o in rest]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for r in self._replicas:
            client = r.clients.pop(loop, None)
            if client is not None:
                await client.close()


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
