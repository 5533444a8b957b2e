"""A fault-injecting HTTP proxy for OpenAI-compatible servers (aiohttp, in its own thread).

Put it between the ``openai`` engine and a real server, then choose what the next requests see:

    >>> proxy = FaultProxy("http://127.0.0.1:8000")  # doctest: +SKIP
    >>> with proxy:  # doctest: +SKIP
    ...     proxy.inject(Fault("status", status=429, retry_after=1.0), times=1)
    ...     # first chat completion gets a 429 with Retry-After: 1, later ones pass through

Faults apply to ``POST /v1/chat/completions`` only (``GET /v1/models`` always passes), so tests
control exactly which judge requests fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web

FaultKind = Literal[
    "pass",  # forward unchanged
    "status",  # answer with an HTTP error status (optionally Retry-After)
    "slow",  # wait ``delay`` seconds, then forward
    "truncate",  # forward, but send only the first half of the upstream JSON body
    "bad_json",  # 200 with a body that is not JSON
    "no_choices",  # 200 with a completion object that has no choices
    "no_scores",  # forward, but replace every choice's text by prose without any score
    "reset",  # close the connection without any answer
]


_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


@dataclass
class Fault:
    """What one request gets. ``status``/``retry_after`` for "status", ``delay`` for "slow"."""

    kind: FaultKind = "pass"
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0


class FaultProxy:
    """Forward to ``upstream`` (e.g. ``http://127.0.0.1:8000``), injecting faults on demand."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.default = Fault("pass")
        self._queue: list[Fault] = []
        self._lock = threading.Lock()
        #: chat completion requests received, and how many are being served right now
        self.requests = 0
        self.in_flight = 0
        self.log: list[tuple[float, str]] = []  # (time, fault kind) per chat request
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def url(self) -> str:
        """Base URL for the openai client."""
        return f"http://127.0.0.1:{self.port}/v1"

    def inject(self, fault: Fault, times: int | None = None) -> None:
        """Give ``fault`` to the next ``times`` chat requests, or to all of them if None."""
        with self._lock:
            if times is None:
                self._queue.clear()
                self.default = fault
            else:
                self._queue.extend([fault] * times)

    def reset(self) -> None:
        """Pass everything through again and zero the counters."""
        with self._lock:
            self._queue.clear()
            self.default = Fault("pass")
            self.requests = 0
            self.log.clear()

    def _next_fault(self) -> Fault:
        with self._lock:
            self.requests += 1
            fault = self._queue.pop(0) if self._queue else self.default
            self.log.append((time.monotonic(), fault.kind))
            return fault

    # ------------------------------------------------------------------------------- serving

    async def _forward(
        self, session: aiohttp.ClientSession, request: web.Request, body: bytes
    ) -> tuple[int, bytes, str]:
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        async with session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app[_SESSION]
        chat = request.method == "POST" and request.path.endswith("/chat/completions")
        fault = self._next_fault() if chat else Fault("pass")
        self.in_flight += chat
        try:
            return await self._apply(fault, session, request, body)
        except aiohttp.ClientError as e:  # upstream down or died mid-request
            return web.json_response({"error": f"upstream: {e}"}, status=502)
        finally:
            self.in_flight -= chat

    async def _apply(
        self, fault: Fault, session: aiohttp.ClientSession, request: web.Request, body: bytes
    ) -> web.StreamResponse:
        if fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return web.json_response(
                {"error": {"message": f"injected {fault.status}"}},
                status=fault.status,
                headers=headers,
            )
        if fault.kind == "bad_json":
            return web.Response(status=200, text="{not json", content_type="application/json")
        if fault.kind == "no_choices":
            return web.json_response({"id": "x", "object": "chat.completion", "model": "m"})
        if fault.kind == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never delivered: the socket is closed
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        status, data, ctype = await self._forward(session, request, body)
        if fault.kind == "truncate":
            return web.Response(
                status=status, body=data[: len(data) // 2], content_type="application/json"
            )
        if fault.kind == "no_scores" and status == 200:
            payload = json.loads(data)
            for choice in payload.get("choices") or []:
                choice["message"]["content"] = "Both answers are fine, I think. No verdict."
            return web.json_response(payload)
        return web.Response(status=status, body=data, headers={"Content-Type": ctype})

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        # long upstream timeout: the engine under test owns the timeouts
        app[_SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600))
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that gave up (timeout) also ends its "slow" handler;
        # short shutdown_timeout: closing the proxy must not wait for held requests
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.app[_SESSION].close()
        await self._runner.cleanup()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
