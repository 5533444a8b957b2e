"""The reward server over real HTTP as OpenRLHF drives it: many concurrent single-sample
requests, coalescing into engine batches, and a graceful shutdown that loses no answer.

The full-size measurement is benchmarks/server_load.py (2,000 requests, 64 clients); these are
smaller and assert on correctness and answer counts only, never on time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from grm_plugin import GenerativeRewardFn, TransformersEngineConfig
from grm_plugin.adapters.openrlhf import LOG_KEYS, OpenRLHFProtocol
from grm_plugin.cli.engine_args import judge_config_from_args
from grm_plugin.cli.main import build_parser
from grm_plugin.cli.serve import apply_batching
from grm_plugin.engines import GenerationRequest
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import RuleJudgeEngine, length_score

from .openai_fakes import FakeOpenAIServer, free_port

ROOT = Path(__file__).resolve().parents[1]


def sample(i: int) -> tuple[dict, str]:
    """OpenRLHF's body for sample ``i`` and the response in it (1-11 chars, varying with i)."""
    prompt = f"<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\n"
    response = "y" * (1 + i % 11)
    body = {"query": [prompt + response + "<|im_end|>"], "prompts": [prompt], "labels": [""]}
    return body, response


def assert_one_answer(data: dict, expected_reward: float | None = None) -> None:
    """A well-formed answer for one sample (and, if given, the expected reward)."""
    assert set(data) == {"rewards", "scores", "extra_logs"}
    assert len(data["rewards"]) == len(data["scores"]) == 1
    assert math.isfinite(data["rewards"][0])
    assert set(data["extra_logs"]) == set(LOG_KEYS)
    assert all(len(v) == 1 for v in data["extra_logs"].values())
    if expected_reward is not None:
        assert data["rewards"][0] == pytest.approx(expected_reward)


async def post_all(url: str, indices: Sequence[int], clients: int) -> dict[int, httpx.Response]:
    """``clients`` workers post the samples in ``indices``; each one's response, by index."""
    todo = iter(indices)
    got: dict[int, httpx.Response] = {}
    # no keep-alive: OpenRLHF opens a new connection per sample
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)

    async def worker(c: httpx.AsyncClient) -> None:
        for i in todo:
            assert i not in got
            got[i] = await c.post(url, json=sample(i)[0])

    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        await asyncio.gather(*(worker(c) for _ in range(clients)))
    return got


@contextmanager
def running(rm: GenerativeRewardFn, settings: ServerSettings | None = None) -> Iterator[str]:
    """The server app on a real 127.0.0.1 socket (uvicorn in a thread); yields its base URL."""
    port = free_port()
    # every sample here has its own prompt: no group to wait for
    app = create_app(rm, OpenRLHFProtocol(), settings or ServerSettings(port=port, group_window=0))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class JitteryRuleJudge(RuleJudgeEngine):
    """RuleJudgeEngine with a random 0-10 ms delay, so answers finish out of order."""

    def __init__(self) -> None:
        super().__init__()
        self._rng = random.Random(0)

    async def generate(self, request: GenerationRequest) -> list[str]:
        await asyncio.sleep(self._rng.uniform(0.0, 0.01))
        return await super().generate(request)


# --------------------------------------------------------------------------------- load


def test_every_concurrent_request_gets_its_own_well_formed_answer():
    engine = JitteryRuleJudge()
    n, clients = 300, 32
    with running(GenerativeRewardFn(engine, parse_retries=0)) as base:
        got = asyncio.run(post_all(f"{base}/get_reward", range(n), clients))
        health = httpx.get(f"{base}/health").json()
    assert sorted(got) == list(range(n))
    for i, r in got.items():
        assert r.status_code == 200, (i, r.text)
        # the rule judge's reward for this request's own response: no answer crossed over
        assert_one_answer(r.json(), (length_score(sample(i)[1]) - 1) / 9)
        assert r.json()["extra_logs"]["grm_failed"] == [0.0]
    assert len(engine.requests) == n  # one judgment per request, none lost or repeated
    assert health["in_flight"] == 0


# --------------------------------------------------------------------------------- coalescing


def test_serve_batching_flags_reach_the_local_engine_and_are_refused_elsewhere():
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--model", "/m.gguf", "--batch-size", "32", "--batch-wait", "0.05"]
    )
    engine = apply_batching(args, judge_config_from_args(args)).engine
    assert isinstance(engine, TransformersEngineConfig)
    assert (engine.batch_size, engine.batch_wait) == (32, 0.05)
    args = parser.parse_args(["serve", "--model", "/m.gguf"])
    engine = apply_batching(args, judge_config_from_args(args)).engine
    assert (engine.batch_size, engine.batch_wait) == (8, 0.01)  # the config's defaults
    args = parser.parse_args(["serve", "--server", "http://127.0.0.1:1/v1", "--batch-size", "4"])
    with pytest.raises(ValueError, match="local model"):
        apply_batching(args, judge_config_from_args(args))
    args = parser.parse_args(["serve", "--model", "/m.gguf", "--batch-wait", "-1"])
    with pytest.raises(ValueError):
        apply_batching(args, judge_config_from_args(args))


@pytest.mark.parametrize(("batch_size", "coalesced"), [(8, True), (1, False)])
def test_concurrent_single_sample_requests_share_engine_batches(tmp_path, batch_size, coalesced):
    pytest.importorskip("torch")
    from grm_plugin.engines.transformers_engine import TransformersEngine

    from .tiny_model import build_tiny_model

    class SpyEngine(TransformersEngine):
        """Records the size of each batch the engine generates."""

        batches: list[int] = []

        def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
            self.batches.append(len(requests))
            return super()._generate_batch(requests)

    # a generous wait: the 8 requests reach the batcher well within it, so batches fill up;
    # no score-line prefill round, whose continuations (a random model never parses) would be a
    # second round of batches and this test counts the judgments' own
    cfg = TransformersEngineConfig(
        model=str(build_tiny_model(tmp_path)),
        batch_size=batch_size,
        batch_wait=1.0,
        score_prefill=False,
    )
    engine = SpyEngine(cfg)
    engine.batches = []
    rm = GenerativeRewardFn(engine, max_new_tokens=16, parse_retries=0)
    with running(rm) as base:
        got = asyncio.run(post_all(f"{base}/get_reward", range(8), 8))
    assert all(r.status_code == 200 for r in got.values())
    for r in got.values():
        assert_one_answer(r.json())  # a random model: the flagged fallback, well formed
    assert sum(engine.batches) == 8
    if coalesced:
        assert max(engine.batches) > 1 and len(engine.batches) < 8
    else:
        assert engine.batches == [1] * 8


# --------------------------------------------------------------------------------- shutdown


def test_sigterm_lets_in_flight_requests_finish_with_complete_answers(tmp_path):
    """``grm-plugin serve`` as a real process, judging through a slow (1 s) OpenAI server: a
    SIGTERM while requests are in flight must not cost them their answers (rollout workers
    would otherwise retry against a dead server and stop the training)."""
    n = 6
    with FakeOpenAIServer(lambda body, call: 1.0) as judge:  # each judgment takes 1 s
        cfg = tmp_path / "grm.json"
        cfg.write_text(
            json.dumps(
                {
                    "engine": {"type": "openai", "base_url": judge.url, "max_retries": 0},
                    "sampling": {"samples": 1, "parse_retries": 0, "max_new_tokens": 16},
                }
            )
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve", "--config", str(cfg)]
        env = {k: v for k, v in os.environ.items() if k != "GRM_PLUGIN_TOKEN"}  # no token
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            end = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < end, "server did not start"
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)

            async def load_then_sigterm() -> dict[int, httpx.Response]:
                posts = asyncio.ensure_future(post_all(f"{base}/get_reward", range(n), n))
                # all n in flight in the server and waiting on the judge before the signal
                async with httpx.AsyncClient() as c:
                    while (
                        len(judge.bodies) < n
                        or (await c.get(f"{base}/health")).json()["in_flight"] < n
                    ):
                        assert not posts.done(), "answered before all were in flight"
                        await asyncio.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                return await posts

            got = asyncio.run(load_then_sigterm())
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(got) == list(range(n))
    for r in got.values():
        assert r.status_code == 200
        # the fake judge's "Final Scores: [[5]]", not a fallback: the judgment was completed
        assert_one_answer(r.json(), (5 - 1) / 9)
        assert r.json()["extra_logs"]["grm_failed"] == [0.0]
    # uvicorn re-raises the SIGTERM once it has shut down cleanly: the exit is the signal's
    assert code in (0, -signal.SIGTERM)


# --------------------------------------------------------------------------------- slow clients


def _start_serve(port: int, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve"]
    # nothing listens on port 9: a judged request gets the failure answer at once (HTTP 200)
    cmd += ["--server", "http://127.0.0.1:9/v1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "GRM_PLUGIN_TOKEN"}
    proc = subprocess.Popen([*cmd, *flags], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < end, "server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)


SLOW_CAP = 20


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[tuple[int, subprocess.Popen]]:
    """``grm-plugin serve`` with a token, a 20-connection cap and a 1 s header timeout."""
    port = free_port()
    proc = _start_serve(port, "--token", "t0k", "--max-connections", str(SLOW_CAP),
                        "--header-timeout", "1")  # fmt: skip
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(30)


def test_slow_clients_cannot_use_up_the_servers_file_descriptors(guarded_server):
    """Connections that never finish their headers used to be held forever (140 of them made
    a 128-fd server unreachable). Now each has --header-timeout to send its headers and at most
    --max-connections are open; a client with the token is served once the slow ones are cut."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to count the server's file descriptors")
    import socket

    port, proc = guarded_server
    slow_count = 60
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    slow: list[socket.socket] = []
    try:
        idle_fds = len(list(fd_dir.iterdir()))
        for _ in range(slow_count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            slow.append(s)
        time.sleep(0.3)  # let the server accept what it will
        held = len(list(fd_dir.iterdir())) - idle_fds
        # without the guard: 60 (one per slow client, for as long as they like)
        assert held <= SLOW_CAP + 2, f"{held} descriptors held for {slow_count} slow clients"
        # the slow ones are cut after the header timeout: they read EOF (or a reset)
        closed = 0
        for s in slow:
            s.settimeout(10)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == slow_count
        # and a real client is served (bounded retries: the cap may refuse it while slow
        # clients still hold their slots)
        url = f"http://127.0.0.1:{port}/get_reward"
        for _ in range(50):
            try:
                r = httpx.post(url, json=sample(0)[0], headers={"Authorization": "Bearer t0k"})
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r.status_code == 200
        assert_one_answer(r.json())
    finally:
        for s in slow:
            s.close()


def test_a_client_without_the_token_is_cut_off_before_its_body(guarded_server):
    """401 as soon as the headers are in, with Connection: close: the body is never read."""
    import socket

    port, _ = guarded_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 1000000\r\n\r\n{")  # fmt: skip
        data = b""
        while chunk := s.recv(65536):  # the server closes the connection: recv ends
            data += chunk
    assert data.startswith(b"HTTP/1.1 401")
    assert b"connection: close" in data.lower()
