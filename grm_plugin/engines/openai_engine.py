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
from dataclasses import dataclass

import openai
from openai.types.chat import ChatCompletion

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


@dataclass
class _LoopState:
    """What one event loop owns: httpx connections and asyncio primitives must not cross loops."""

    clients: dict[str, openai.AsyncOpenAI]
    semaphore: asyncio.Semaphore
    #: resolved when the engine is garbage collected: the keeper then closes the clients
    stop: asyncio.Future
    closed: bool = False


#: keeper tasks, held strongly so that a pending keeper is never garbage collected mid-wait
_KEEPERS: set[asyncio.Task] = set()


async def _keep(state: _LoopState, finalizer: weakref.finalize) -> None:
    """Owns one loop's clients until the loop shuts down (``asyncio.run`` cancels every task)
    or the engine is garbage collected, then closes them. It holds no reference to the engine,
    so it does not keep the engine alive."""
    try:
        await state.stop
    except asyncio.CancelledError:
        finalizer.detach()
        await _close(state)
        raise
    # (a keeper collected with its dead loop gets GeneratorExit: nothing can be awaited then)
    finalizer.detach()
    await _close(state)


async def _close(state: _LoopState) -> None:
    state.closed = True
    clients, state.clients = list(state.clients.values()), {}
    for client in clients:
        await client.close()


def _stop_soon(loop: asyncio.AbstractEventLoop, stop: asyncio.Future) -> None:
    """Called by ``weakref.finalize`` from whichever thread collected the engine."""

    def stop_now() -> None:
        if not stop.done():
            stop.set_result(None)

    if not loop.is_closed():
        loop.call_soon_threadsafe(stop_now)


class OpenAIEngine(JudgeEngine):
    """Chat completions against one or more replicas, least outstanding requests first.

    ``n=k`` goes in one request when the server honours it (shared prompt prefix); a server that
    answers with fewer choices (e.g. ``transformers serve``) gets the rest as parallel requests,
    and is remembered as such. Each try gets ``GenerationRequest.request_timeout``; tries are
    retried with backoff (``Retry-After`` honoured) until ``max_retries`` or the request's
    ``expiry`` (the item's deadline, one clock for every call of the item); then ``EngineError``.

    Clients are per event loop and closed when their loop shuts down (``asyncio.run`` cancels
    the keeper task that owns them), so many short-lived loops do not leak sockets. The engine
    pickles as its config.
    """

    def __init__(self, config: OpenAIEngineConfig) -> None:
        self.config = config
        urls = [config.base_url] if isinstance(config.base_url, str) else list(config.base_url)
        self._replicas = [_Replica(u.rstrip("/")) for u in urls]
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._model: str | None = config.model
        self._native_n: bool | None = {"native": True, "parallel": False}.get(config.n_mode)
        self.context_window = config.context_window

    def __getstate__(self) -> dict:
        # clients, sockets and loop-bound primitives stay behind; what was learnt travels
        return {"config": self.config, "model": self._model, "native_n": self._native_n}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])
        self._model, self._native_n = state["model"], state["native_n"]

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None or state.closed:
            # forget loops that shut down or closed (a closed loop's sockets go with it)
            for keeper in [t for t in _KEEPERS if t.get_loop().is_closed()]:
                _KEEPERS.discard(keeper)
            for old in [lp for lp, st in self._loops.items() if st.closed or lp.is_closed()]:
                del self._loops[old]
            state = _LoopState({}, asyncio.Semaphore(self.config.concurrency), loop.create_future())
            self._loops[loop] = state
            finalizer = weakref.finalize(self, _stop_soon, loop, state.stop)
            keeper = loop.create_task(_keep(state, finalizer), name="grm-openai-clients")
            _KEEPERS.add(keeper)
            keeper.add_done_callback(_KEEPERS.discard)
        return state

    def _client(self, replica: _Replica) -> openai.AsyncOpenAI:
        state = self._state()
        client = state.clients.get(replica.url)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=replica.url,
                api_key=self.config.api_key,
                max_retries=0,
                timeout=None,  # each try is bounded by asyncio.wait_for (request + expiry)
                http_client=_aiohttp_client(),
            )
            state.clients[replica.url] = client
        return client

    def _pick(self) -> _Replica:
        low = min(r.outstanding for r in self._replicas)
        return random.choice([r for r in self._replicas if r.outstanding == low])

    async def _model_name(self, request: GenerationRequest) -> str:
        if self._model is None:
            # listing models is part of the item: same expiry
            page = await self._call(lambda c: c.models.list(), request)
            ids = [m.id for m in page.data]
            if not ids:
                raise EngineError("the server lists no models; set engine.model")
            self._model = ids[0]
        return self._model

    async def _call(self, fn, request: GenerationRequest):
        """Call ``fn(client)`` with retries until ``max_retries`` or the request's expiry.

        The expiry covers the wait for a concurrency slot too: a request queued behind a slow
        server must not outlive its item.
        """
        cfg = self.config
        expiry = request.expiry
        started = time.monotonic()
        attempt = 0
        while True:
            replica = self._pick()
            replica.outstanding += 1
            left = expiry.remaining()
            try:
                return await asyncio.wait_for(
                    self._attempt(fn, replica, request),
                    timeout=None if left is None else max(0.01, left),
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
            left = expiry.remaining()
            if attempt > cfg.max_retries or (left is not None and delay >= left):
                raise EngineError(
                    f"{replica.url}: {_describe(err)} (after {attempt} tries, "
                    f"{time.monotonic() - started:.1f}s)"
                ) from err
            log.debug("retrying in %.2fs after %r", delay, err)
            await asyncio.sleep(delay)

    async def _attempt(self, fn, replica: _Replica, request: GenerationRequest):
        """One try: wait for a slot, then call with the per-request timeout (capped by what is
        left of the expiry once the slot is ours)."""
        async with self._state().semaphore:
            timeout = request.attempt_timeout()
            return await asyncio.wait_for(
                fn(self._client(replica)), timeout=None if timeout is None else max(0.01, timeout)
            )

    async def _complete(self, request: GenerationRequest, n: int) -> list[str]:
        model = await self._model_name(request)
        kwargs = dict(
            model=model,
            messages=request.messages,
            n=n,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        if request.seed is not None:
            kwargs["seed"] = request.seed
        body = {**kwargs, **self.config.extra_body}
        # client.post (the openai client's documented call for any endpoint) instead of
        # chat.completions.create: create() walks every message through its TypedDict
        # transform, ~0.5 ms of CPU per request for plain string messages (at_scale.py)
        resp = await self._call(
            lambda c: c.post("/chat/completions", body=body, cast_to=ChatCompletion), request
        )
        return _texts_of(resp)

    async def generate(self, request: GenerationRequest) -> list[str]:
        if request.n == 1 or self._native_n is False:
            outs = await asyncio.gather(*(self._complete(request, 1) for _ in range(request.n)))
            return [o[0] for o in outs]
        texts = await self._complete(request, request.n)
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
            *(self._complete(request, 1) for _ in range(request.n - len(texts)))
        )
        return texts + [o[0] for o in rest]

    async def aclose(self) -> None:
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await _close(state)
            if not state.stop.done():
                state.stop.set_result(None)  # the keeper has nothing left to close


def _texts_of(resp: object) -> list[str]:
    """The choices' texts; anything but a string (or a null, i.e. no text) is the server's
    failure, never the caller's bad input."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise EngineError(f"malformed completion: no choices in {str(resp)[:200]!r}")
    texts = []
    for i, choice in enumerate(choices):
        message = getattr(choice, "message", None)
        if message is None:
            raise EngineError(f"malformed completion: choice {i} has no message ({choice!r:.80})")
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            raise EngineError(
                f"malformed completion: choice {i} content is {type(content).__name__} "
                f"({content!r:.80}), not text"
            )
        texts.append(content or "")
    return texts


def _aiohttp_client() -> openai.DefaultAioHttpClient | None:
    """openai's aiohttp transport when installed (``openai[aiohttp]``), else None (httpx).

    httpx's connection pool checks every pooled connection on each request, so with 64
    connections the client spent ~4 ms of CPU per request; aiohttp ~1.7 ms
    (``benchmarks/at_scale.py``): at thousands of requests the client's CPU is the bottleneck.
    """
    factory = getattr(openai, "DefaultAioHttpClient", None)
    if factory is None:
        return None
    try:
        return factory()
    except RuntimeError:  # openai without the aiohttp extra
        return None


def _describe(err: Exception) -> str:
    """``Type: message`` of a failed try. openai's aiohttp transport reports a refused or reset
    connection as a connect *timeout*; such a failure is named by its real cause instead."""
    cause = err.__cause__
    while cause is not None and not type(cause).__module__.startswith("aiohttp"):
        cause = cause.__cause__
    if isinstance(err, openai.APITimeoutError) and cause is not None:
        if "Timeout" not in type(cause).__name__:
            return f"APIConnectionError: {cause}"
    return f"{type(err).__name__}: {err}"


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
