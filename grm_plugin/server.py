"""The reward server behind ``grm-plugin serve``: OpenRLHF's remote reward-model protocol.

POST ``/get_reward`` (or ``/``) with ``{"query": [...], "prompts": [...], "labels": [...]}``
answers ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``; GET ``/health``.

OpenRLHF's client waits 180 s, retries 5 times and then stops the training, so the server always
answers in time: a judge failure or the deadline gives the fallback reward and a flag with
HTTP 200. Only requests that no OpenRLHF client sends (bad JSON, wrong types, too large, no
token) get a 4xx.

Example:
    >>> from fastapi.testclient import TestClient
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> app = create_app(GenerativeRewardFn(RuleJudgeEngine()), ServerSettings())
    >>> body = {"query": ["Q: hi A: hello"], "prompts": ["Q: hi A: "], "labels": [""]}
    >>> TestClient(app).post("/get_reward", json=body).json()["rewards"]  # 1 + 5 chars -> 5/9
    [0.5555555555555556]
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .adapters.openrlhf import OpenRLHFRequest, OpenRLHFReward, OpenRLHFSettings
from .reward import GenerativeRewardFn

log = logging.getLogger(__name__)


class ServerSettings(BaseModel):
    """Settings of ``grm-plugin serve`` (the ``server`` section of a plugin config file)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="loopback by default: the reward is not public")
    port: int = Field(5000, ge=0, le=65535)
    token: str | None = Field(
        None,
        description="if set, requests need 'Authorization: Bearer <token>' or '?token=<token>' "
        "(OpenRLHF's client cannot send headers: put it in --reward.remote_url)",
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_queries: int = Field(1024, ge=1, description="queries per request")
    max_concurrent: int = Field(
        256, ge=1, description="requests judged at once; the others wait (within the deadline)"
    )
    openrlhf: OpenRLHFSettings = Field(default_factory=OpenRLHFSettings)


class _BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


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


def create_app(rm: GenerativeRewardFn, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``rm`` in OpenRLHF's protocol. Run it with uvicorn."""
    settings = settings or ServerSettings()
    adapter = OpenRLHFReward(rm, settings.openrlhf)
    deadline = settings.openrlhf.deadline
    state: dict[str, Any] = {"in_flight": 0, "slots": None}

    def slots() -> asyncio.Semaphore:
        # made on first use, inside the server's event loop (it binds to that loop)
        if state["slots"] is None:
            state["slots"] = asyncio.Semaphore(settings.max_concurrent)
        return state["slots"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # load the tokenizer (if any) now rather than in the first request's deadline
        await asyncio.to_thread(lambda: adapter.extractor)
        yield
        await rm.aclose()

    # no /docs or /openapi.json: nothing to browse on a training-cluster port
    app = FastAPI(
        title="grm-plugin reward server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def authorized(request: Request) -> bool:
        if settings.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            # OpenRLHF's client sends no headers: the token can come as ?token=... in the URL
            given = request.query_params.get("token", "")
        # compare_digest: the time taken does not tell how much of the token was right
        return secrets.compare_digest(given.strip().encode(), settings.token.encode())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": state["in_flight"]}

    async def get_reward(request: Request) -> JSONResponse:
        started = time.monotonic()
        if not authorized(request):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except _BodyTooLarge:
            return _error(413, f"request body larger than {settings.max_body_bytes} bytes")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            return _error(400, "request body is not UTF-8")
        except json.JSONDecodeError as e:
            return _error(400, f"request body is not JSON: {e}")
        except RecursionError:
            # e.g. 100,000 nested '[': the parser gives up; a 500 would hide whose fault it was
            return _error(400, "request body is nested too deeply")
        if not isinstance(data, dict):
            return _error(422, "request body must be a JSON object with a 'query' list")
        try:
            parsed = OpenRLHFRequest.model_validate(data)
        except ValidationError as e:
            # include_input=False: do not echo (possibly huge) queries back
            errors = e.errors(include_url=False, include_input=False, include_context=False)
            return _error(422, "malformed reward request", detail=errors)
        if len(parsed.query) > settings.max_queries:
            return _error(413, f"more than {settings.max_queries} queries in one request")

        n = len(parsed.query)
        state["in_flight"] += 1
        try:
            try:
                # waiting for a slot counts against the deadline: OpenRLHF waits for nobody
                remaining = deadline - (time.monotonic() - started)
                await asyncio.wait_for(slots().acquire(), timeout=max(remaining, 0.001))
            except asyncio.TimeoutError:
                log.warning("no judging slot within the deadline: fallback for %d queries", n)
                return JSONResponse(adapter.fallback(n, timeout=True))
            try:
                remaining = deadline - (time.monotonic() - started)
                result = await adapter.areward(
                    parsed.query, parsed.prompts, parsed.labels, deadline=remaining
                )
            finally:
                slots().release()
        except Exception:  # noqa: BLE001 - whatever went wrong, OpenRLHF gets a reward
            log.exception("reward request failed: fallback for %d queries", n)
            return JSONResponse(adapter.fallback(n))
        finally:
            state["in_flight"] -= 1
        return JSONResponse(result)

    # OpenRLHF's docs use /get_reward; a bare base URL posts to /
    app.add_api_route("/get_reward", get_reward, methods=["POST"])
    app.add_api_route("/", get_reward, methods=["POST"])
    return app
