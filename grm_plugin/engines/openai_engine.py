"""Judge through any OpenAI-compatible server (vLLM, SGLang, transformers serve, hosted APIs),
speaking the chat-completions wire format directly over aiohttp.

Not the ``openai`` SDK: building its request, its httpx bridge and its ``ChatCompletion``
objects cost ~1.2 ms of CPU per judgment, several times what the HTTP exchange itself costs
(``benchmarks/client_floor.py``); in front of a fast judge fleet the client was the limit. What
the SDK did for us is here: the ``Authorization: Bearer`` header, retries with backoff,
``Retry-After``, per-try timeouts, and its error kinds (``grm_plugin.engines.errors``).

Example:
    >>> cfg = OpenAIEngineConfig(base_url="http://127.0.0.1:8000/v1")
    >>> eng = OpenAIEngine(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config import OpenAIEngineConfig
from .base import GenerationRequest, JudgeEngine
from .errors import (
    EngineBadResponse,
    EngineConnectionError,
    EngineError,
    EnginePromptTooLong,
    EngineRateLimited,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    map_exceptions,
)

if sys.version_info >= (3, 11):
    from asyncio import timeout_at as _timeout_at
else:  # aiohttp depends on async-timeout below 3.11
    from async_timeout import timeout_at as _timeout_at

log = logging.getLogger(__name__)

#: aiohttp's failures -> ours, first match wins (a timeout of aiohttp's is also a ClientError)
_AIOHTTP_ERRORS: dict[type[BaseException], type[EngineError]] = {
    TimeoutError: EngineTimeout,
    asyncio.TimeoutError: EngineTimeout,  # not the builtin before 3.11
    aiohttp.ClientPayloadError: EngineBadResponse,  # the body was cut short
    aiohttp.ClientError: EngineConnectionError,  # refused, reset, disconnected
    OSError: EngineConnectionError,
}

#: how servers say that the prompt does not fit the model's context (vLLM, SGLang, OpenAI,
#: transformers serve): the caller's input, so it is never retried
_TOO_LONG = re.compile(
    r"context.length|maximum context|max_model_len|longer than the maximum|prompt is too long"
    r"|too many (input )?tokens",
    re.IGNORECASE,
)


@dataclass
class _Replica:
    url: str
    outstanding: int = 0


@dataclass
class _LoopState:
    """What one event loop owns: connections and asyncio primitives must not cross loops."""

    session: aiohttp.ClientSession | None
    semaphore: asyncio.Semaphore
    #: resolved when the engine is garbage collected: the keeper then closes the session
    stop: asyncio.Future
    closed: bool = False


#: keeper tasks, held strongly so that a pending keeper is never garbage collected mid-wait
_KEEPERS: set[asyncio.Task] = set()


async def _keep(state: _LoopState, finalizer: weakref.finalize) -> None:
    """Owns one loop's session until the loop shuts down (``asyncio.run`` cancels every task)
    or the engine is garbage collected, then closes it. It holds no reference to the engine,
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
    session, state.session = state.session, None
    if session is not None:
        await session.close()


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
    ``expiry`` (the item's deadline, one clock for every call of the item); then the last
    try's error, of its kind (``grm_plugin.engines.errors``).

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
        self.max_in_flight = config.concurrency

    #: every try and every backoff wait is bounded by the request's expiry
    honours_expiry = True

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
            semaphore = asyncio.Semaphore(self.config.concurrency)
            state = _LoopState(self._new_session(), semaphore, loop.create_future())
            self._loops[loop] = state
            finalizer = weakref.finalize(self, _stop_soon, loop, state.stop)
            keeper = loop.create_task(_keep(state, finalizer), name="grm-openai-clients")
            _KEEPERS.add(keeper)
            keeper.add_done_callback(_KEEPERS.discard)
        return state

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            headers={
                "Authorization": f"Bearer {self.config.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                # some hosted gateways refuse requests without one
                "User-Agent": "grm-plugin",
            },
            # the engine's semaphore bounds requests in flight; each try has one timeout of
            # ours (request + expiry), so aiohttp's own (5 min total by default) is off
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        )

    def _pick(self) -> _Replica:
        if len(self._replicas) == 1:
            return self._replicas[0]
        low = min(r.outstanding for r in self._replicas)
        return random.choice([r for r in self._replicas if r.outstanding == low])

    async def _model_name(self, request: GenerationRequest) -> str:
        if self._model is None:
            # listing models is part of the item: same expiry
            page = await self._call("GET", "/models", None, request)
            data = page.get("data") if isinstance(page, dict) else None
            ids = [m.get("id") for m in data or [] if isinstance(m, dict) and m.get("id")]
            if not ids:
                raise EngineRejected("the server lists no models; set engine.model")
            self._model = ids[0]
        return self._model

    async def _call(
        self, method: str, path: str, body: bytes | None, request: GenerationRequest
    ) -> Any:
        """The decoded JSON answer, with retries until ``max_retries`` or the request's expiry;
        the last try's error otherwise (its class: ``grm_plugin.engines.errors``)."""
        cfg = self.config
        expiry = request.expiry
        started = time.monotonic()
        attempt = 0
        while True:
            replica = self._pick()
            replica.outstanding += 1
            try:
                return await self._attempt(method, replica, path, body, request)
            except EngineError as e:
                if not e.retryable:
                    raise
                err = e
            finally:
                replica.outstanding -= 1
            attempt += 1
            delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random())
            if err.retry_after is not None:
                delay = err.retry_after
            left = expiry.remaining()
            if attempt > cfg.max_retries or (left is not None and delay >= left):
                raise type(err)(
                    f"{err} (after {attempt} tries, {time.monotonic() - started:.1f}s)"
                ) from err
            log.debug("retrying in %.2fs after %r", delay, err)
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        replica: _Replica,
        path: str,
        body: bytes | None,
        request: GenerationRequest,
    ) -> Any:
        """One try, under one timeout: the expiry while it waits for a slot (a request queued
        behind a slow server must not outlive its item), then ``request_timeout`` capped by
        the expiry once the slot is ours."""
        state = self._state()
        session = state.session
        assert session is not None
        expiry_at = request.expiry.at
        limit = request.request_timeout
        bound: float | None = None
        with map_exceptions(_AIOHTTP_ERRORS, replica.url):
            try:
                async with _timeout_at(expiry_at) as scope:
                    async with state.semaphore:
                        if limit is not None:
                            when = time.monotonic() + max(0.01, limit)
                            if expiry_at is None or when < expiry_at:
                                bound = max(0.01, limit)
                                _reschedule(scope, when)
                        async with session.request(method, replica.url + path, data=body) as resp:
                            raw = await resp.read()
                            status = resp.status
                            headers = resp.headers
            except (TimeoutError, asyncio.TimeoutError):  # one class from 3.11
                what = f"within {bound:.1f}s" if bound is not None else "before the deadline"
                raise EngineTimeout(f"{replica.url}: no answer {what}") from None
        if status >= 300:
            raise _status_error(replica.url, status, raw, headers)
        try:
            return json.loads(raw)
        except ValueError as e:  # a truncated or garbled body (proxy or server hiccup)
            raise EngineBadResponse(f"{replica.url}: {type(e).__name__}: {e}") from e

    async def _complete(self, request: GenerationRequest, n: int) -> list[str]:
        model = self._model or await self._model_name(request)
        body: dict[str, Any] = {
            "model": model,
            "messages": request.messages,
            "n": n,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if self.config.extra_body:
            body.update(self.config.extra_body)
        payload = json.dumps(body, ensure_ascii=False).encode()
        return _texts_of(await self._call("POST", "/chat/completions", payload, request))

    async def generate(self, request: GenerationRequest) -> list[str]:
        if request.n == 1:
            return await self._complete(request, 1)  # (gather would cost a task)
        if self._native_n is False:
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


def _reschedule(scope: Any, when: float) -> None:
    # asyncio.Timeout.reschedule (3.11+); async_timeout's is called update
    (getattr(scope, "reschedule", None) or scope.update)(when)


def _status_error(url: str, status: int, raw: bytes, headers: Any) -> EngineError:
    """The error an HTTP status stands for, with the server's own message."""
    message = _error_message(raw)
    text = f"{url}: HTTP {status}: {message}"
    if status == 429:
        return EngineRateLimited(text, retry_after=_retry_after(headers))
    if status == 408:
        return EngineTimeout(text)
    if status >= 500:
        err: EngineError = EngineServerError(text)
        err.retry_after = _retry_after(headers)
        return err
    if status in (400, 413, 422) and _TOO_LONG.search(message):
        return EnginePromptTooLong(text)
    return EngineRejected(text)  # other 4xx: retrying will not help


def _error_message(raw: bytes) -> str:
    """The message of an error body: ``{"error": {"message": ...}}`` (OpenAI, vLLM),
    ``{"error": "..."}``, ``{"message"|"detail": ...}``, or the start of the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or error
        return str(error)[:500]
    return str(body)[:200]


def _texts_of(resp: Any) -> list[str]:
    """The choices' texts; anything but a string (or a null, i.e. no text) is the server's
    failure, never the caller's bad input."""
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not isinstance(choices, list) or not choices:
        raise EngineBadResponse(f"malformed completion: no choices in {str(resp)[:200]!r}")
    texts = []
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise EngineBadResponse(
                f"malformed completion: choice {i} has no message ({choice!r:.80})"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise EngineBadResponse(
                f"malformed completion: choice {i} content is {type(content).__name__} "
                f"({content!r:.80}), not text"
            )
        texts.append(content or "")
    return texts


def _retry_after(headers: Any) -> float | None:
    """Seconds a server asked us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or
    as an HTTP date (the forms the openai SDK honoured)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
