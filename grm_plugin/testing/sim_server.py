"""A simulated continuous-batching judge server: OpenAI-compatible, on 127.0.0.1, with a known
capacity and switchable faults, for load tests and framework integration tests.

It answers ``POST /v1/chat/completions`` (``n`` samples) and ``GET /v1/models`` like vLLM would,
but its judgments come from a scoring rule applied to the responses it reads back out of the real
judge prompt (so the client's prompt builder, parser and voting run for real), and its timing
comes from a ``CapacityModel`` (real time, asyncio timers), so its saturated throughput is known
in advance. ``GET /sim/stats`` reports the work done. Faults (latency spikes, 429 with
Retry-After, 500, dropped connections, hangs, truncated bodies) come by rate from a seeded
``FaultPlan``, from its ``inject`` queue, or per request from a ``"sim_fault"`` body field.

Bounded by construction: it binds loopback only, and stops by itself after ``max_lifetime``
seconds or ``max_requests`` chat requests; hangs end after ``hang_seconds``.

HTTP is served with h11 on asyncio (not uvicorn) because a dropped connection must close the
socket without a byte of answer, which an ASGI app cannot do.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> with SimServer() as server:
    ...     rm = GenerativeRewardFn(server.url, samples=2)
    ...     rm.score("Say hi", ["hi", "hello there"]).scores
    [3.0, 10.0]

In its own process (so that its CPU is not the client's)::

    python -m grm_plugin.testing --config '{"replicas": 2}'   # prints the URLs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import h11
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .capacity import CapacityModel, ReplicaCapacity
from .engines import length_score, responses_in_prompt, rule_judgment
from .faults import Fault, FaultKind, FaultPlan

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class SimServerConfig(BaseModel):
    """The simulated server: capacity per replica, faults, and its bounds."""

    model_config = ConfigDict(extra="forbid")

    capacity: CapacityModel = Field(default_factory=CapacityModel)
    faults: FaultPlan = Field(default_factory=FaultPlan)
    replicas: int = Field(1, ge=1, le=64, description="independent replicas, one port each")
    host: str = Field("127.0.0.1", description="loopback only")
    port: int = Field(0, ge=0, le=65535, description="first replica's port (0: any free port)")
    model: str = "sim-judge"
    score_fn: str = Field(
        "grm_plugin.testing.engines:length_score",
        description="module:function scoring one response text (1-10)",
    )
    max_lifetime: float = Field(600.0, gt=0, le=24 * 3600, description="seconds, then it stops")
    max_requests: int = Field(1_000_000, ge=1, description="chat requests, then it stops")
    max_body: int = Field(16 * 2**20, ge=1024, description="bytes per request body")

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in LOOPBACK:
            raise ValueError(f"the simulated server binds loopback only ({LOOPBACK}), not {v!r}")
        return v


@dataclass
class SimStats:
    """What the server did. Token counts are the capacity model's."""

    requests: int = 0
    answered: int = 0
    samples: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decode_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    per_replica: list[int] = field(default_factory=list)
    prefill_busy_s: float = 0.0
    decode_busy_s: float = 0.0
    #: sequence-seconds spent decoding; over an interval / its length = the mean decode batch
    decode_job_s: float = 0.0


def import_rule(path: str) -> Callable[[str], float]:
    """``"module:function"`` -> the function."""
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"score_fn must look like 'module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return content if isinstance(content, str) else ""


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error_body(message: str, kind: str) -> bytes:
    return _json({"error": {"message": message, "type": kind, "code": None}})


class SimServer:
    """The simulated judge server, run in a background thread of this process.

    Args:
        config: a ``SimServerConfig`` (or a dict of its fields); defaults are a fast server.
        score_fn: scores one response (overrides ``config.score_fn``).

    ``url`` (first replica) and ``urls`` are set once started; ``faults.inject(...)`` and
    ``script([...])`` script the next requests; ``stats()`` is thread-safe.
    """

    def __init__(
        self,
        config: SimServerConfig | dict | None = None,
        *,
        score_fn: Callable[[str], float] | None = None,
    ) -> None:
        if not isinstance(config, SimServerConfig):
            config = SimServerConfig.model_validate(config or {})
        self.config = config
        self.faults = config.faults
        self.score_fn = score_fn or (
            length_score
            if config.score_fn == "grm_plugin.testing.engines:length_score"
            else import_rule(config.score_fn)
        )
        self.urls: list[str] = []
        self._replicas = [ReplicaCapacity(config.capacity) for _ in range(config.replicas)]
        self._stats = SimStats(per_replica=[0] * config.replicas)
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stopped = threading.Event()

    # ------------------------------------------------------------------------ scripting, stats

    @property
    def url(self) -> str:
        """Base URL of the first replica, e.g. ``http://127.0.0.1:PORT/v1``."""
        if not self.urls:
            raise RuntimeError("the server is not started")
        return self.urls[0]

    def script(self, texts: Sequence[str]) -> None:
        """The next samples get these judgment texts, in turn, instead of the rule's."""
        with self._lock:
            self._script.extend(texts)

    def stats(self) -> SimStats:
        """A snapshot of the work done so far."""
        with self._lock:
            s = SimStats(**{**asdict(self._stats), "faults": dict(self._stats.faults)})
        s.per_replica = list(self._stats.per_replica)
        for r in self._replicas:
            s.prefill_tokens += r.prefill_tokens
            s.cached_tokens += r.cached_tokens
            s.decode_tokens += r.decode_tokens
            s.samples += r.samples
            s.prefill_busy_s += r.prefill.busy_time
            s.decode_busy_s += r.decode.busy_time
            s.decode_job_s += r.decode.job_seconds
        return s

    # ------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> SimServer:
        """Start in a daemon thread; returns once every replica listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(ready))
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True, name="grm-sim-server")
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"simulated server did not start: {failure[:1]}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open connections are closed) and wait for the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve(self, ready: threading.Event | None = None) -> None:
        """Serve on the current event loop until stopped, ``max_lifetime`` or ``max_requests``."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = []
        try:
            for i, replica in enumerate(self._replicas):
                port = 0 if cfg.port == 0 else cfg.port + i
                srv = await asyncio.start_server(
                    lambda r, w, rep=replica, idx=i: self._connection(rep, idx, r, w),
                    cfg.host,
                    port,
                )
                servers.append(srv)
                bound = srv.sockets[0].getsockname()[1]
                host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
                self.urls.append(f"http://{host}:{bound}/v1")
            if ready is not None:
                ready.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), cfg.max_lifetime)
        finally:
            for srv in servers:
                srv.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for srv in servers:
                await srv.wait_closed()
            self.stopped.set()

    # ------------------------------------------------------------------------ HTTP

    async def _connection(
        self,
        replica: ReplicaCapacity,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(conn, reader)
                if request is None:
                    break
                keep = await self._dispatch(replica, index, conn, writer, request, body)
                if not keep or conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request, chunks, size = None, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.config.max_body:
                    raise ConnectionError("request body too large")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            else:  # ConnectionClosed, PAUSED
                return None, b""

    @staticmethod
    async def _send(
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        hdrs = [("content-type", "application/json"), ("content-length", str(len(body)))]
        writer.write(conn.send(h11.Response(status_code=status, headers=[*hdrs, *headers])))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _dispatch(
        self,
        replica: ReplicaCapacity,
        index: int,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
    ) -> bool:
        """Answer one request; False when the connection must be closed."""
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0].rstrip("/")
        if method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": self.config.model, "object": "model", "owned_by": "grm-plugin-sim"}]
            await self._send(conn, writer, 200, _json({"object": "list", "data": data}))
        elif method == "GET" and path == "/health":
            await self._send(conn, writer, 200, b'{"status":"ok"}')
        elif method == "GET" and path == "/sim/stats":
            await self._send(conn, writer, 200, _json(asdict(self.stats())))
        elif method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            return await self._chat(replica, index, conn, writer, body)
        else:
            await self._send(conn, writer, 404, _error_body(f"no route {method} {path}", "404"))
        return True

    async def _chat(
        self,
        replica: ReplicaCapacity,
        index: int,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        body: bytes,
    ) -> bool:
        try:
            req = json.loads(body)
            messages = req["messages"]
            n = int(req.get("n") or 1)
            max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
            max_tokens = None if max_tokens is None else int(max_tokens)
            fault_name = req.get("sim_fault")
            if not isinstance(messages, list) or not messages or n < 1:
                raise ValueError("messages must be a non-empty list and n >= 1")
            fault = None if fault_name is None else self.faults.fault(FaultKind(fault_name))
        except (ValueError, KeyError, TypeError) as e:
            await self._send(conn, writer, 400, _error_body(f"bad request: {e}", "invalid"))
            return True
        with self._lock:
            st = self._stats
            st.requests += 1
            st.per_replica[index] += 1
            over = st.requests > self.config.max_requests
        if over:  # bounded in count: answer, then stop
            await self._send(conn, writer, 503, _error_body("request limit reached", "limit"))
            assert self._stop is not None
            self._stop.set()
            return False
        fault = fault or self.faults.draw()
        if fault is not None:
            with self._lock:
                self._stats.faults[fault.kind.value] = (
                    self._stats.faults.get(fault.kind.value, 0) + 1
                )
        with self._lock:
            self._stats.in_flight += 1
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
        try:
            return await self._chat_answer(replica, conn, writer, messages, n, max_tokens, fault)
        finally:
            with self._lock:
                self._stats.in_flight -= 1

    async def _chat_answer(
        self,
        replica: ReplicaCapacity,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        messages: list,
        n: int,
        max_tokens: int | None,
        fault: Fault | None,
    ) -> bool:
        kind = None if fault is None else fault.kind
        if kind is FaultKind.RATE_LIMIT:
            assert fault is not None
            headers = [("retry-after", f"{fault.retry_after:g}")]
            await self._send(conn, writer, 429, _error_body("rate limited", "rate"), headers)
            return True
        if kind is FaultKind.SERVER_ERROR:
            await self._send(conn, writer, 500, _error_body("simulated failure", "server"))
            return True
        if kind is FaultKind.DROP:
            writer.transport.abort()
            return False
        if kind is FaultKind.HANG:
            assert fault is not None
            await asyncio.sleep(fault.delay)
            writer.transport.abort()
            return False
        if kind is FaultKind.LATENCY_SPIKE:
            assert fault is not None
            await asyncio.sleep(fault.delay)
        prompt = "\n".join(_content(m) for m in messages)
        await replica.serve(prompt, n, max_tokens)
        texts = self._texts(_content(messages[-1]), n)
        out_tokens = replica.model.output_len(max_tokens)
        payload = _json(
            {
                "id": f"simcmpl-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.config.model,
                "choices": [
                    {
                        "index": i,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": t},
                    }
                    for i, t in enumerate(texts)
                ],
                "usage": {
                    "prompt_tokens": replica.model.tokens(prompt),
                    "completion_tokens": out_tokens * n,
                    "total_tokens": replica.model.tokens(prompt) + out_tokens * n,
                },
            }
        )
        with self._lock:
            self._stats.answered += 1
        if kind is FaultKind.TRUNCATE:
            hdrs = [("content-type", "application/json"), ("content-length", str(len(payload)))]
            writer.write(conn.send(h11.Response(status_code=200, headers=hdrs)))
            writer.write(conn.send(h11.Data(data=payload[: len(payload) // 2])))
            await writer.drain()
            writer.transport.abort()
            return False
        await self._send(conn, writer, 200, payload)
        return True

    def _texts(self, last_message: str, n: int) -> list[str]:
        with self._lock:
            scripted = [self._script.popleft() for _ in range(min(n, len(self._script)))]
        if len(scripted) == n:
            return scripted
        text = rule_judgment(responses_in_prompt(last_message), self.score_fn)
        return scripted + [text] * (n - len(scripted))


def die_with_parent() -> None:
    """In a child process (``preexec_fn``): SIGTERM when the parent dies, even by SIGKILL, so a
    crashed test run leaves no server behind (Linux; elsewhere the lifetime limits remain)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SimServerProcess:
    """The simulated server in a child process (``python -m grm_plugin.testing``),
    so that its CPU is not the client's. Stopped (SIGTERM, then kill) on exit.

    Example:
        >>> with SimServerProcess({"replicas": 2}) as proc:  # doctest: +SKIP
        ...     proc.urls
        ['http://127.0.0.1:40001/v1', 'http://127.0.0.1:40002/v1']
    """

    def __init__(self, config: SimServerConfig | dict | None = None) -> None:
        if not isinstance(config, SimServerConfig):
            config = SimServerConfig.model_validate(config or {})
        self.config = config
        self.urls: list[str] = []
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SimServerProcess:
        cmd = [sys.executable, "-m", "grm_plugin.testing"]
        cmd += ["--config", self.config.model_dump_json()]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError("simulated server process did not start")
        self.urls = json.loads(line)["urls"]
        return self

    def stats(self) -> SimStats:
        """The child's ``/sim/stats``, summed over replicas (stats are per process)."""
        import httpx

        root = self.urls[0].rsplit("/v1", 1)[0]
        data = httpx.get(root + "/sim/stats", timeout=10).json()
        known = SimStats.__dataclass_fields__
        return SimStats(**{k: v for k, v in data.items() if k in known})

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until ``max_lifetime``, ``max_requests`` or SIGTERM; print the URLs as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="{}", help="SimServerConfig as JSON")
    args = parser.parse_args(argv)
    server = SimServer(json.loads(args.config))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ready = threading.Event()
        task = asyncio.ensure_future(server.serve(ready))
        while not ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        print(json.dumps({"urls": server.urls}), flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: server._stop and server._stop.set())
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
