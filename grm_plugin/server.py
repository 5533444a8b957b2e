"""The reward server behind ``grm-plugin serve``: HTTP, limits and grouping, for any protocol.

A ``RewardProtocol`` (one per framework, living with its adapter) turns the framework's request
body into ``RewardItem``s and their judgments into the framework's answer; this module does the
rest: the token, body limits, JSON decoding off the event loop, the request deadline, and the
``GroupBatcher`` that judges items sharing a prompt together. Protocols are found by name
(``load_protocol("openrlhf")``), imported only when asked for: the core imports no adapter.

Every request a framework's client can send gets HTTP 200 within the deadline: a judge failure
or the deadline gives the protocol's failure answer, flagged. Only requests no such client sends
(bad JSON, wrong types, too large, no token) get a 4xx. GET ``/health`` says whether the engine
works.

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
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import JudgeConfig
from .grouping import GroupBatcher, Judged, RewardItem
from .results import FailureKind
from .reward import GenerativeRewardFn

log = logging.getLogger(__name__)

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
    ``failure`` run on the event loop and must be cheap.
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


class ServerSettings(BaseModel):
    """Settings of ``grm-plugin serve`` (the ``server`` section of a plugin config file)."""

    model_config = ConfigDict(extra="forbid")

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
        description="seconds from a request's arrival to its answer: group window, wait for a "
        "judging slot and the judgment (which the judge config's deadline.item may bound "
        "further); then the failure answer. None: the protocol's (OpenRLHF: 150)",
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
    def _no_empty_token(cls, v: str | None) -> str | None:
        # "" would make every request without a token match it: auth silently off
        if v is not None and not v.strip():
            raise ValueError("the token is empty: give a real token, or none to serve without one")
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


def _decode_json(body: bytes) -> Any:
    """JSON from a body; ``ProtocolError`` (400) for anything the parser refuses."""
    try:
        return json.loads(body.decode("utf-8"))
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
    return secrets.compare_digest(given.strip().encode(), token.encode())


def create_app(
    rm: GenerativeRewardFn, protocol: RewardProtocol, settings: ServerSettings | None = None
) -> FastAPI:
    """A FastAPI app serving ``rm`` in ``protocol``'s wire format. Run it with uvicorn."""
    settings = settings or ServerSettings()
    deadline = settings.deadline or protocol.default_deadline
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
        if not report.ok:
            body["status"] = "engine down"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    async def get_reward(request: Request) -> JSONResponse:
        started = time.monotonic()
        # before anything else, the body included: a stranger costs no work and no memory
        if not _authorized(request, settings.token):
            return JSONResponse(
                {"error": "missing or wrong token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
            )
        try:
            body = await asyncio.wait_for(
                _read_body(request, settings.max_body_bytes), timeout=deadline
            )
        except _BodyTooLarge:
            return _error(413, f"request body larger than {settings.max_body_bytes} bytes")
        except asyncio.TimeoutError:
            return _error(408, f"request body not received within {deadline:.0f}s")
        try:
            # decoding and the protocol's text work may take a while on megabytes: a thread,
            # so other requests are answered meanwhile
            items, req_state = await asyncio.to_thread(_prepare, protocol, body)
        except ProtocolError as e:
            extra = {"detail": e.detail} if e.detail is not None else {}
            return _error(e.status, e.message, **extra)
        if len(items) > settings.max_queries:
            return _error(413, f"more than {settings.max_queries} queries in one request")

        state["in_flight"] += 1
        try:
            remaining = deadline - (time.monotonic() - started)
            judged = await asyncio.gather(
                *(batcher.judge(item, timeout=remaining) for item in items)
            )
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


def _prepare(protocol: RewardProtocol, body: bytes) -> tuple[list[RewardItem], Any]:
    return protocol.decode(_decode_json(body))


# ---------------------------------------------------------------------------------- config file


def plugin_sections(
    config: str | Path | Mapping[str, Any], protocol: str
) -> tuple[JudgeConfig, dict[str, Any], dict[str, Any]]:
    """(judge config, the protocol's section, server section) from a YAML/JSON file or a dict.

    The file is either a plain JudgeConfig, or has sections ``judge`` (a JudgeConfig), one named
    after the protocol (e.g. ``openrlhf``) and ``server`` (``ServerSettings``)::

        judge:
          engine: {type: openai, base_url: http://127.0.0.1:8000/v1}
        openrlhf: {fallback_reward: 0.0}
        server: {port: 5000, group_window: 0.5}

    Example:
        >>> judge, section, server = plugin_sections({"server": {"port": 6000}}, "openrlhf")
        >>> section, server
        ({}, {'port': 6000})
    """
    if isinstance(config, Mapping):
        data: Any = dict(config)
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    sections = {"judge", protocol, "server"}
    if not sections & data.keys():
        return JudgeConfig.model_validate(data), {}, {}
    unknown = data.keys() - sections
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
    return (
        JudgeConfig.model_validate(data.get("judge") or {}),
        dict(data.get(protocol) or {}),
        dict(data.get("server") or {}),
    )
