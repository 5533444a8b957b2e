"""The reward server behind ``grm-plugin serve``: HTTP, limits and grouping, for any protocol.

A ``RewardProtocol`` (one per framework, living with its adapter) turns the framework's request
body into ``RewardItem``s and their judgments into the framework's answer; this module does the
rest: the token, body limits, JSON decoding off the event loop (bounded: a list longer than
``max_queries`` stops the reading), the request deadline, and the ``GroupBatcher`` that judges
items sharing a prompt together. Protocols are found by name
(``load_protocol("openrlhf")``), imported only when asked for: the core imports no adapter.

Every request a framework's client can send gets HTTP 200 within the deadline: a judge failure
or the deadline gives the protocol's failure answer, flagged. Only requests no such client sends
(bad JSON, wrong types, too large, no token) get a 4xx. GET ``/health`` says whether the engine
works and how many recent judgments gave scores: it is 503 when the engine is down or when all
recent judgments failed.

Example:
    >>> from fastapi.testclient import TestClient
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> protocol = load_protocol("openrlhf").from_section({})
    >>> app = create_app(GenerativeRewardFn(RuleJudgeEngine()), protocol, ServerSettings())
    >>> body = {"query": ["Q: hi A: hello"], "prompts": ["Q: hi A: "], "labels": [""]}
    >>> TestClient(app).post("/get_reward", json=body).json()["rewards"]  # 1 + 5 chars -> 5/9
    [0.5555555555555556]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import json
import logging
import math
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.requests import ClientDisconnect

from .config import JudgeConfig, load_mapping
from .deadline import NEVER, Expiry, total_bound
from .grouping import GroupBatcher, Judged, RewardItem
from .results import FailureKind
from .reward import GenerativeRewardFn

log = logging.getLogger(__name__)

#: a request header with the seconds left of the request's deadline elsewhere (the
#: ``serve --workers`` front): the server answers within that if it is sooner than its own, so
#: the front's clock counts, not a fresh deadline per hop. It can only shorten the deadline.
DEADLINE_HEADER = "x-grm-deadline"

#: protocol name -> "module:class"; imported on first use only
PROTOCOLS: dict[str, str] = {"openrlhf": "grm_plugin.adapters.openrlhf:OpenRLHFProtocol"}


class ProtocolError(Exception):
    """A request the protocol cannot answer: becomes an HTTP 4xx with ``message``."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class RewardProtocol(ABC):
    """A framework's reward wire format. Subclasses live with their adapter.

    ``decode`` runs in a worker thread (it may cut and search megabytes of text); ``encode`` and
    ``failure`` run on the event loop and must be cheap. ``decode`` gets no body whose top-level
    list (or a list value of its top-level object) is longer than the server's ``max_queries``:
    such a body is refused (413) while it is read, as every wire format so far is parallel
    lists with one entry per item.
    """

    #: the name ``grm-plugin serve --protocol`` and config files use
    name: ClassVar[str]
    #: POST routes that take reward requests
    paths: ClassVar[tuple[str, ...]] = ("/",)
    #: seconds per request when the server settings give none
    default_deadline: ClassVar[float] = 60.0

    @classmethod
    @abstractmethod
    def from_section(
        cls, section: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> RewardProtocol:
        """Build from the config file's section of this protocol, flags applied on top."""

    @abstractmethod
    def decode(self, data: Any) -> tuple[list[RewardItem], Any]:
        """The items of a decoded JSON body, and whatever ``encode`` needs to answer it.
        Raises ``ProtocolError`` for a body the framework's client would never send."""

    @abstractmethod
    def encode(self, state: Any, judged: Sequence[Judged]) -> dict[str, Any]:
        """The answer: one judgment per item of ``decode``, in order."""

    @abstractmethod
    def failure(self, state: Any, kind: FailureKind, error: str) -> dict[str, Any]:
        """The answer when the request's items could not be judged at all."""

    async def startup(self) -> None:  # noqa: B027 - optional hook
        """Load what the first request should not wait for (e.g. a tokenizer)."""


def load_protocol(name: str) -> type[RewardProtocol]:
    """The protocol class registered as ``name`` (imports its adapter now)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    module, _, attr = PROTOCOLS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, RewardProtocol)):
        raise TypeError(f"{PROTOCOLS[name]} is not a RewardProtocol")
    return cls


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"must be a finite number of seconds, got {value}")
    return value


def normalize_token(token: str) -> str:
    """A token as HTTP carries it: without surrounding whitespace, which a header value loses on
    the way (and a token file's newline is no part of the token). Applied to the configured token
    and to the one a request presents, so the two are always compared alike.

    Example:
        >>> normalize_token(" s3cret\\n")
        's3cret'
    """
    return token.strip()


class ServerSettings(BaseModel):
    """Settings of ``grm-plugin serve`` (the ``server`` section of a plugin config file)."""

    # hide_input_in_errors: a refused token must not be printed in the error
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    protocol: str = Field("openrlhf", description="wire format (a key of PROTOCOLS)")
    host: str = Field("127.0.0.1", description="loopback by default: the reward is not public")
    port: int = Field(5000, ge=0, le=65535)
    token: str | None = Field(
        None,
        description="if set, requests need it as 'Authorization: Bearer <token>', as the "
        "password of 'Authorization: Basic' (a URL's user:token@host), or '?token=<token>'",
    )
    deadline: float | None = Field(
        None,
        gt=0,
        description="seconds from a request's complete body to its answer: group window, wait "
        "for a judging slot and the judgment (which the judge config's deadline.item may bound "
        "further); then the failure answer. The body has as long again to arrive (else 408). "
        "None: the protocol's (OpenRLHF: 150)",
    )
    group_window: float = Field(
        0.5,
        ge=0,
        description="seconds a sample waits for others of its prompt to be judged together "
        "(0: every sample alone)",
    )
    group_size: int = Field(8, ge=1, description="at most this many samples judged together")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_queries: int = Field(1024, ge=1, description="queries per request")
    max_concurrent: int = Field(
        256, ge=1, description="judgments run at once; the others wait (within the deadline)"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a connection has to send a request's headers"
    )
    max_connections: int | None = Field(
        None, ge=1, description="open connections at most (None: the open-file limit - 256)"
    )

    @field_validator("deadline", "group_window", "header_timeout")
    @classmethod
    def _finite_seconds(cls, v: float | None) -> float | None:
        return _finite(v)

    @field_validator("token")
    @classmethod
    def _usable_token(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = normalize_token(v)
        # "" would make every request without a token match it: auth silently off
        if not v:
            raise ValueError("the token is empty: give a real token, or none to serve without one")
        # a header value is decoded as latin-1 and a client encodes it as it likes: anything
        # beyond printable ASCII never matches as Bearer, so every request would get 401
        bad = next((i for i, c in enumerate(v) if not (c.isascii() and c.isprintable())), None)
        if bad is not None:
            raise ValueError(
                f"the token has a character HTTP headers cannot carry (position {bad + 1}): "
                "use printable ASCII only, e.g. python -c 'import secrets; "
                "print(secrets.token_hex(16))'"
            )
        return v

    @model_validator(mode="after")
    def _window_within_deadline(self) -> ServerSettings:
        if self.deadline is not None and self.group_window >= self.deadline / 2:
            raise ValueError(
                f"group_window ({self.group_window}s) must be under half the deadline "
                f"({self.deadline}s): the judgment needs the rest"
            )
        return self


class _BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    # Connection: close: a refused client does not keep a socket open
    return JSONResponse(
        {"error": message, **extra}, status_code=status, headers={"Connection": "close"}
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class TooManyItems(ValueError):
    """A list (``what``: "queries") or the top-level object ("fields") of the body has more
    than ``limit`` entries (``loads_bounded``)."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"more than {limit} {what}")
        self.what = what
        self.limit = limit


#: keys of a body's top-level object at most (OpenRLHF sends 3): each is read in Python
MAX_FIELDS = 256


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def loads_bounded(text: str, max_items: int) -> Any:
    """``json.loads(text)``, except that the top-level list, or each list value of the top-level
    object, is read one element at a time and ``TooManyItems`` is raised at element
    ``max_items + 1`` (and at key ``MAX_FIELDS + 1`` of the object): a body of millions of
    entries costs no more than ``max_items`` of them. Everything else (the elements themselves)
    is read by ``json``'s own decoder.

    Example:
        >>> loads_bounded('{"query": ["a", "b"], "labels": [{"k": [1, 2, 3]}, null]}', 2)
        {'query': ['a', 'b'], 'labels': [{'k': [1, 2, 3]}, None]}
        >>> loads_bounded('{"query": ["a", "b", "c"]}', 2)
        Traceback (most recent call last):
        ...
        grm_plugin.server.TooManyItems: more than 2 queries
    """
    at = _SPACE.match(text).end()  # type: ignore[union-attr] - * always matches
    if text.startswith("{", at):
        value, at = _object(text, at, max_items)
    elif text.startswith("[", at):
        value, at = _array(text, at, max_items)
    else:
        value, at = _scan(text, at)
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    if at != len(text):
        raise json.JSONDecodeError("Extra data", text, at)
    return value


def _scan(text: str, at: int) -> tuple[Any, int]:
    return _DECODER.raw_decode(text, _SPACE.match(text, at).end())  # type: ignore[union-attr]


def _expect(text: str, at: int, what: str, message: str) -> int:
    """The index after ``what`` (whitespace before it skipped), else JSONDecodeError."""
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    if not text.startswith(what, at):
        raise json.JSONDecodeError(message, text, at)
    return at + 1


def _array(text: str, at: int, max_items: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    after = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", after):
        return out, after + 1
    at += 1
    while True:
        if len(out) == max_items:
            raise TooManyItems("queries", max_items)
        value, at = _scan(text, at)
        out.append(value)
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith("]", at):
            return out, at + 1
        at = _expect(text, at, ",", "Expecting ',' delimiter")


def _object(text: str, at: int, max_items: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    after = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text.startswith("}", after):
        return out, after + 1
    at += 1
    while True:
        if len(out) == MAX_FIELDS:
            raise TooManyItems("fields", MAX_FIELDS)
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if not text.startswith('"', at):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, at
            )
        key, at = _DECODER.raw_decode(text, at)
        at = _expect(text, at, ":", "Expecting ':' delimiter")
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith("[", at):
            out[key], at = _array(text, at, max_items)
        else:
            out[key], at = _scan(text, at)
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith("}", at):
            return out, at + 1
        at = _expect(text, at, ",", "Expecting ',' delimiter")


def _decode_json(body: bytes, max_items: int) -> Any:
    """JSON from a body; ``ProtocolError`` (400) for anything the parser refuses, 413 for a list
    of more than ``max_items`` entries (found before the rest of it is read)."""
    try:
        return loads_bounded(body.decode("utf-8"), max_items)
    except TooManyItems as e:
        raise ProtocolError(413, f"{e} in one request") from None
    except UnicodeDecodeError:
        raise ProtocolError(400, "request body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(400, f"request body is not JSON: {e}") from None
    except RecursionError:
        # e.g. 100,000 nested '[': the parser gives up; a 500 would hide whose fault it was
        raise ProtocolError(400, "request body is nested too deeply") from None
    except ValueError as e:
        # e.g. an integer of more than 4,300 digits (Python's int conversion limit)
        raise ProtocolError(400, f"request body has a value Python cannot read: {e}") from None


def _authorized(request: Request, token: str | None) -> bool:
    """Bearer header, Basic header (password = token: what a URL's user:token@ becomes), or
    ``?token=``; compared in constant time."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            given = base64.b64decode(given.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    elif scheme != "bearer":
        given = request.query_params.get("token", "")
    # compare_digest: the time taken does not tell how much of the token was right
    return secrets.compare_digest(normalize_token(given).encode(), token.encode())


async def admitted_body(
    request: Request, settings: ServerSettings, deadline: float
) -> bytes | Response:
    """``request``'s body, or the refusal to answer with: the token first, before the body (a
    stranger costs no work and no memory), then the body within ``deadline`` and the size
    bound. One admission for the server and the ``--workers`` front alike."""
    if not _authorized(request, settings.token):
        return JSONResponse(
            {"error": "missing or wrong token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
        )
    try:
        return await asyncio.wait_for(
            _read_body(request, settings.max_body_bytes), timeout=deadline
        )
    except _BodyTooLarge:
        return _error(413, f"request body larger than {settings.max_body_bytes} bytes")
    except asyncio.TimeoutError:
        return _error(408, f"request body not received within {deadline:.0f}s")
    except ClientDisconnect:
        # a rollout worker stopped or restarted: nobody to answer, nothing went wrong here
        log.info("a client disconnected before sending its whole request body")
        return Response(status_code=400)


def create_app(
    rm: GenerativeRewardFn, protocol: RewardProtocol, settings: ServerSettings | None = None
) -> FastAPI:
    """A FastAPI app serving ``rm`` in ``protocol``'s wire format. Run it with uvicorn."""
    settings = settings or ServerSettings()
    deadline = total_bound(settings.deadline, default=protocol.default_deadline)
    batcher = GroupBatcher(
        rm,
        window=settings.group_window,
        max_size=settings.group_size,
        max_concurrent=settings.max_concurrent,
    )
    state: dict[str, Any] = {"in_flight": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await protocol.startup()
        yield
        await batcher.aclose()
        await rm.aclose()

    # no /docs or /openapi.json: nothing to browse on a training-cluster port
    app = FastAPI(
        title="grm-plugin reward server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> JSONResponse:
        stats = batcher.stats
        body: dict[str, Any] = {
            "status": "ok",
            "in_flight": state["in_flight"],
            "items": stats.items,
            "judgments": stats.judgments,
        }
        # a dead engine (e.g. a crashed local batching worker) must not look healthy: every
        # answer would be a fallback while the orchestrator's probe says ok
        report = rm.engine.health()
        body["engine"] = {"ok": report.ok, "reason": report.reason}
        # nor a judge whose every recent judgment failed (a judge server down or overloaded,
        # a model that writes no score): the engine object may be fine while no reward is real
        recent = batcher.recent
        body["judge"] = {
            "recent": recent.count,
            "failed": recent.failed,
            "success_rate": recent.success_rate,
            "last_error": recent.last_error,
        }
        if not report.ok:
            body["status"] = "engine down"
        elif recent.failing():
            body["status"] = "judge failing"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def get_reward(request: Request) -> Response:
        body = await admitted_body(request, settings, deadline)
        if isinstance(body, Response):
            return body
        # the deadline runs from the complete body, not from the headers: the client's own
        # timeout (OpenRLHF's read timeout) starts once it has sent the body, and a client
        # uploading slowly must not bring forward the deadline of the group it joins. One
        # clock for the request: decoding, the group window, the slot and the judgment.
        expiry = Expiry.after(deadline).sooner(_forwarded_expiry(request))
        try:
            # decoding and the protocol's text work may take a while on megabytes: a thread,
            # so other requests are answered meanwhile
            items, req_state = await asyncio.to_thread(
                _prepare, protocol, body, settings.max_queries
            )
        except ProtocolError as e:
            extra = {"detail": e.detail} if e.detail is not None else {}
            return _error(e.status, e.message, **extra)
        if len(items) > settings.max_queries:
            return _error(413, f"more than {settings.max_queries} queries in one request")

        state["in_flight"] += 1
        try:
            judged = await asyncio.gather(*(batcher.judge(item, expiry=expiry) for item in items))
            return JSONResponse(protocol.encode(req_state, judged))
        except Exception as e:  # noqa: BLE001 - whatever went wrong, the client gets an answer
            log.exception("reward request failed: failure answer for %d items", len(items))
            return JSONResponse(
                protocol.failure(req_state, FailureKind.ENGINE, f"{type(e).__name__}: {e}")
            )
        finally:
            state["in_flight"] -= 1

    for path in protocol.paths:
        app.add_api_route(path, get_reward, methods=["POST"])
    return app


def _forwarded_expiry(request: Request) -> Expiry:
    """The expiry a forwarding front gave in ``DEADLINE_HEADER`` (seconds left, counted from
    now), ``NEVER`` without one; a value that is no positive finite number is ignored, so the
    header can only shorten the server's own deadline, never lengthen or zero it."""
    try:
        given = float(request.headers.get(DEADLINE_HEADER, "inf"))
    except ValueError:
        return NEVER
    return Expiry.after(given) if 0 < given < math.inf else NEVER


def _prepare(protocol: RewardProtocol, body: bytes, max_items: int) -> tuple[list[RewardItem], Any]:
    return protocol.decode(_decode_json(body, max_items))


# ---------------------------------------------------------------------------------- config file


def plugin_sections(
    config: str | Path | Mapping[str, Any], protocol: str
) -> tuple[JudgeConfig, dict[str, Any], dict[str, Any]]:
    """(judge config, the protocol's section, server section) from a YAML/JSON file or a dict.

    The file is either a plain JudgeConfig, or has sections ``judge`` (a JudgeConfig), one named
    after the protocol (e.g. ``openrlhf``) and ``server`` (``ServerSettings``)::

        judge:
          engine: {type: openai, base_url: http://127.0.0.1:8000/v1}
        openrlhf: {policy: {on_failure: fallback, fallback: 0.0}}
        server: {port: 5000, group_window: 0.5}

    Example:
        >>> judge, section, server = plugin_sections({"server": {"port": 6000}}, "openrlhf")
        >>> section, server
        ({}, {'port': 6000})
    """
    if isinstance(config, Mapping):
        data = dict(config)
    elif isinstance(config, (str, Path)):
        data = load_mapping(config, what="plugin config")
    else:
        raise TypeError(
            f"a plugin config is a dict or a YAML/JSON path, not {type(config).__name__}"
        )
    sections = {"judge", protocol, "server"}
    if not sections & data.keys():
        return JudgeConfig.coerce(data), {}, {}
    unknown = data.keys() - sections
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
    return (
        JudgeConfig.coerce(data.get("judge")),
        dict(data.get(protocol) or {}),
        dict(data.get("server") or {}),
    )
