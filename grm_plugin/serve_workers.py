"""``grm-plugin serve --workers N``: N reward-server processes behind one port, a GRPO group in one.

One ``grm-plugin serve`` process judges on one core. ``--workers N`` starts N of them (each
today's server: group window, group size, policy), each on a Unix socket in a private (0700)
folder, and puts a thin front on the port. The front judges nothing: it reads each request,
sends every query to the worker its group key picks (a stable hash of the prompt and the label,
the key the worker's ``GroupBatcher`` groups by), so the samples of one prompt meet in one
process whichever client sent them, and joins the answers back in query order. Round-robin or
``SO_REUSEPORT`` would spread connections, not prompts, and split groups.

- **Deadline**: the front's clock counts. It forwards the time left of the request's deadline
  (``DEADLINE_HEADER``); the worker answers within that, not within a fresh deadline of its own.
- **A worker that dies**: the front restarts it (with a short backoff) and resends its
  unanswered queries to it (judging is idempotent); queries still unanswered when the deadline
  comes get the protocol's failure answer (the reward policy's fill, flagged). Every query gets
  an answer.
- **Errors**: a request a worker refuses (4xx) is refused as a whole with the worker's status
  and body, as one process would; a body the front cannot split goes to one worker whole, which
  gives the same error one process would.
- ``GET /health`` asks every worker: ``ok`` (200) when all are, else 503 with each one's state.

Example:
    >>> worker_of(group_key("Q: 1+1? A: ", "2"), 2) == worker_of(group_key("Q: 1+1? A: ", "2"), 2)
    True
    >>> sorted({worker_of(group_key(f"prompt {i}", ""), 2) for i in range(20)})
    [0, 1]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .deadline import Expiry, total_bound
from .results import FailureKind
from .server import (
    DEADLINE_HEADER,
    ProtocolError,
    RewardProtocol,
    ServerSettings,
    _decode_json,
    _error,
    admitted_body,
)

log = logging.getLogger(__name__)

#: seconds a worker has to answer /health after it is started (a local model may load slowly)
START_TIMEOUT_S = 600.0
#: seconds the front waits past the deadline for a worker's answer: the worker answers at the
#: deadline at the latest (the front's, forwarded), this is the hop back
GRACE_S = 1.0
#: restart backoff, seconds: doubled per quick death, at most the last
BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)
#: bodies up to this size are decoded on the event loop (a thread hop costs more)
INLINE_DECODE_BYTES = 64 * 1024


def group_key(prompt: str | None, label: Any, query: str = "") -> bytes:
    """The bytes a query is routed by: its prompt and label (the samples of one prompt), or,
    without a prompt (judged alone anyway), the query itself.

    Example:
        >>> group_key("p", "4") == group_key("p", "4"), group_key("p", "4") == group_key("p", "5")
        (True, False)
    """
    if not prompt:
        return b"q\0" + query.encode("utf-8", "surrogatepass")
    label_text = json.dumps(label, sort_keys=True, ensure_ascii=False, default=str)
    return b"p\0" + prompt.encode("utf-8", "surrogatepass") + b"\0" + label_text.encode()


def worker_of(key: bytes, n: int) -> int:
    """The worker (0..n-1) of a group key: a hash that is the same in every process and run
    (Python's ``hash`` of a str is salted per process).

    Example:
        >>> worker_of(b"anything", 1)
        0
    """
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def route(data: Any, n: int) -> list[int] | None:
    """The worker of each query of an OpenRLHF-shaped body (``query``/``prompts``/``labels``
    parallel lists), or None for a body of another shape (sent whole to one worker, which
    answers it as one process would, 4xx included).

    Example:
        >>> owners = route({"query": ["a", "b"], "prompts": ["p", "p"], "labels": ["", ""]}, 4)
        >>> owners[0] == owners[1]  # one prompt, one worker
        True
        >>> route({"query": "not a list"}, 2) is None
        True
    """
    if not isinstance(data, dict):
        return None
    queries = data.get("query")
    if not isinstance(queries, list) or not queries:
        return None
    lists = []
    for name in ("prompts", "labels"):
        value = data.get(name)
        if value is not None and (not isinstance(value, list) or len(value) != len(queries)):
            return None
        lists.append(value or [None] * len(queries))
    out = []
    for query, prompt, label in zip(queries, *lists, strict=True):
        if not isinstance(query, str) or not (prompt is None or isinstance(prompt, str)):
            return None
        out.append(worker_of(group_key(prompt, label, query), n))
    return out


def _part(data: dict[str, Any], indices: Sequence[int]) -> dict[str, Any]:
    """The body of ``indices``' queries (other keys copied as they are)."""
    out = dict(data)
    for name in ("query", "prompts", "labels"):
        if isinstance(data.get(name), list):
            out[name] = [data[name][i] for i in indices]
    return out


def merge(n: int, parts: Sequence[tuple[Sequence[int], dict[str, Any]]]) -> dict[str, Any]:
    """One answer of ``n`` entries from the answers of parts (their query indices, their
    answer): every list value, and every list inside a dict value, is put back in query order.

    Example:
        >>> merge(3, [([0, 2], {"rewards": [0.1, 0.3], "extra_logs": {"f": [0.0, 1.0]}}),
        ...           ([1], {"rewards": [0.2], "extra_logs": {"f": [0.0]}})])
        {'rewards': [0.1, 0.2, 0.3], 'extra_logs': {'f': [0.0, 0.0, 1.0]}}
    """
    out: dict[str, Any] = {}
    for indices, answer in parts:
        for key, value in answer.items():
            if isinstance(value, list):
                slot = out.setdefault(key, [None] * n)
                for i, v in zip(indices, value, strict=True):
                    slot[i] = v
            elif isinstance(value, dict):
                sub = out.setdefault(key, {})
                for name, values in value.items():
                    slot = sub.setdefault(name, [None] * n)
                    for i, v in zip(indices, values, strict=True):
                        slot[i] = v
            else:
                out.setdefault(key, value)
    return out


# ---------------------------------------------------------------------------------- the workers


def die_with_parent() -> None:
    """In a worker (``preexec_fn``): SIGTERM when the front dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    """One ``grm-plugin serve`` child on a Unix socket, restarted by ``watch`` when it dies."""

    index: int
    socket: str
    command: list[str]
    proc: subprocess.Popen | None = None
    client: httpx.AsyncClient | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    stopping: bool = False

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        # its own session: a terminal's Ctrl-C reaches the front only, which then stops the
        # workers after its in-flight requests are answered (not before)
        self.proc = subprocess.Popen(
            [*self.command, "--uds", self.socket],
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    async def wait_started(self, timeout: float) -> None:
        """Until the worker answers /health (any status), else RuntimeError."""
        assert self.client is not None and self.proc is not None
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.index} exited with {self.proc.returncode}")
            try:
                await self.client.get("/health", timeout=5)
                self.ready.set()
                return
            except httpx.TransportError:
                if time.monotonic() > end:
                    raise RuntimeError(
                        f"worker {self.index} did not start in {timeout:.0f}s"
                    ) from None
                await asyncio.sleep(0.05)

    async def watch(self) -> None:
        """Restart the worker whenever it exits (until ``stopping``)."""
        assert self.proc is not None
        quick = 0
        while not self.stopping:
            if self.proc.poll() is None:
                await asyncio.sleep(0.05)
                continue
            self.ready.clear()
            log.warning(
                "worker %d (pid %d) exited with %s: restarting it",
                self.index,
                self.proc.pid,
                self.proc.returncode,
            )
            await asyncio.sleep(BACKOFF_S[min(quick, len(BACKOFF_S) - 1)])
            if self.stopping:
                return
            started = time.monotonic()
            self.restarts += 1
            self.start()
            try:
                await self.wait_started(START_TIMEOUT_S)
            except RuntimeError as e:
                log.error("%s", e)
            # a worker that dies again within a minute of its start backs off further
            quick = quick + 1 if time.monotonic() - started < 60 else 0

    def stop(self, timeout: float) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class WorkerPool:
    """N workers, each running ``command`` (a ``grm-plugin serve`` command line without
    ``--uds``), in a private temporary folder."""

    def __init__(self, command: Sequence[str], n: int, *, stop_timeout: float = 160.0) -> None:
        if n < 2:
            raise ValueError(f"a worker pool needs 2 or more workers, got {n}")
        self.folder = tempfile.mkdtemp(prefix="grm-serve-")  # mode 0700: only this user
        self.workers = [
            Worker(i, os.path.join(self.folder, f"w{i}.sock"), list(command)) for i in range(n)
        ]
        self.stop_timeout = stop_timeout
        self._watchers: list[asyncio.Task] = []

    async def start(self) -> None:
        for w in self.workers:
            w.client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=w.socket),
                base_url="http://worker",
                # idle connections are dropped before the worker's own 5 s keep-alive ends, so a
                # reused connection is never one the worker is closing
                limits=httpx.Limits(max_connections=None, keepalive_expiry=2.0),
            )
            w.start()
        try:
            await asyncio.gather(*(w.wait_started(START_TIMEOUT_S) for w in self.workers))
        except RuntimeError:
            await self.stop()
            raise
        self._watchers = [asyncio.ensure_future(w.watch()) for w in self.workers]

    async def stop(self) -> None:
        for w in self.workers:
            w.stopping = True
        for task in self._watchers:
            task.cancel()
        # SIGTERM to all first: they drain in parallel
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(lambda: [w.stop(self.stop_timeout) for w in self.workers])
        for w in self.workers:
            if w.client is not None:
                await w.client.aclose()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------- the front


@dataclass
class _Sent:
    """What a worker gave for a part: an answer (status, body) or None (no answer in time)."""

    status: int = 0
    body: bytes = b""
    error: str = ""
    kind: FailureKind = FailureKind.ENGINE


async def _send(
    worker: Worker, path: str, content: bytes, headers: dict[str, str], expiry: Expiry
) -> _Sent:
    """Post ``content`` to ``worker``, again (to its restarted self) while it is dead, until
    ``expiry`` (the request's one clock; its time left is forwarded in ``DEADLINE_HEADER``)."""
    assert worker.client is not None
    error = "no worker answer"
    while True:
        left = _left(expiry)
        if left <= 0:
            return _Sent(error=f"deadline passed: {error}", kind=FailureKind.TIMEOUT)
        try:
            await asyncio.wait_for(worker.ready.wait(), timeout=left)
        except asyncio.TimeoutError:
            return _Sent(
                error=f"worker {worker.index} not back within the deadline: {error}",
                kind=FailureKind.TIMEOUT,
            )
        left = _left(expiry)
        sent = {**headers, DEADLINE_HEADER: f"{max(left, 0.001):.3f}"}
        try:
            r = await worker.client.post(
                path, content=content, headers=sent, timeout=left + GRACE_S
            )
        except httpx.TimeoutException as e:
            return _Sent(
                error=f"worker {worker.index} did not answer: {type(e).__name__}",
                kind=FailureKind.TIMEOUT,
            )
        except httpx.TransportError as e:
            # the worker died (reset, refused): ``watch`` restarts it; resend to the new one
            error = f"worker {worker.index}: {type(e).__name__}: {e}"
            log.warning("%s: resending %d bytes", error, len(content))
            await asyncio.sleep(0.05)
            continue
        if r.status_code >= 500:
            # a live worker that fails a request (a bug: it answers 200 or 4xx otherwise) would
            # fail it again: the failure answer now, not retries until the deadline
            return _Sent(error=f"worker {worker.index} answered HTTP {r.status_code}")
        return _Sent(r.status_code, r.content)


def _left(expiry: Expiry) -> float:
    left = expiry.remaining()
    assert left is not None, "the front's requests always have a deadline (total_bound)"
    return left


def _failure(protocol: RewardProtocol, part: Any, sent: _Sent) -> dict[str, Any]:
    """The protocol's failure answer (the policy's fill, flagged) for a part no worker judged."""
    _, state = protocol.decode(part)
    return protocol.failure(state, sent.kind, sent.error)


def create_front_app(
    pool: WorkerPool, protocol: RewardProtocol, settings: ServerSettings | None = None
) -> FastAPI:
    """The front: routes each query by group key to a worker of ``pool``, joins the answers."""
    settings = settings or ServerSettings()
    # the same bound as one server's (``create_app``), so a front adds no time of its own
    deadline = total_bound(settings.deadline, default=protocol.default_deadline)
    workers = pool.workers
    n = len(workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(
        title="grm-plugin reward front",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/health")
    async def health() -> JSONResponse:
        async def one(w: Worker) -> dict[str, Any]:
            known = {"pid": w.proc.pid if w.proc else None, "restarts": w.restarts}
            if not w.ready.is_set() or w.client is None:
                return {"status": "restarting", **known}
            try:
                r = await w.client.get("/health", timeout=5)
                body = r.json()
            except (httpx.HTTPError, ValueError) as e:
                return {"status": f"unreachable: {type(e).__name__}", **known}
            return {**body, **known}

        states = await asyncio.gather(*(one(w) for w in workers))
        ok = all(s.get("status") == "ok" for s in states)
        body: dict[str, Any] = {
            "status": "ok" if ok else "worker down",
            "workers": states,
        }
        for key in ("in_flight", "items", "judgments"):
            body[key] = sum(int(s.get(key, 0)) for s in states)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def get_reward(request: Request) -> Response:
        # the same admission as one server: a stranger costs no work
        body = await admitted_body(request, settings, deadline)
        if isinstance(body, Response):
            return body
        expiry = Expiry.after(deadline)
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        try:
            if len(body) <= INLINE_DECODE_BYTES:
                data = _decode_json(body, settings.max_queries)
            else:
                data = await asyncio.to_thread(_decode_json, body, settings.max_queries)
        except ProtocolError:
            data = None  # a worker gives the error one process would
        owners = route(data, n) if data is not None else None
        if owners is None or len(set(owners)) == 1:
            # one worker has it all: the body as it came, nothing re-encoded
            target = workers[owners[0] if owners else 0]
            sent = await _send(target, path, body, headers, expiry)
            if sent.status:
                return Response(sent.body, sent.status, media_type="application/json")
            if data is None or owners is None:
                return _error(503, sent.error)
            return JSONResponse(_failure(protocol, data, sent))
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(owners):
            groups.setdefault(w, []).append(i)
        parts = [(w, idx, _part(data, idx)) for w, idx in groups.items()]
        results = await asyncio.gather(
            *(
                _send(workers[w], path, json.dumps(part).encode(), headers, expiry)
                for w, _, part in parts
            )
        )
        answers = []
        for (_, idx, part), sent in zip(parts, results, strict=True):
            if sent.status and sent.status != 200:
                # refused (4xx): the whole request is, as one process would refuse it
                return Response(sent.body, sent.status, media_type="application/json")
            if sent.status:
                answers.append((idx, json.loads(sent.body)))
            else:
                log.warning("%d queries unanswered by a worker: %s", len(idx), sent.error)
                answers.append((idx, _failure(protocol, part, sent)))
        return JSONResponse(merge(len(owners), answers))

    for path in protocol.paths:
        app.add_api_route(path, get_reward, methods=["POST"])
    return app
