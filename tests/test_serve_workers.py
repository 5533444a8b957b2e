"""``grm-plugin serve --workers N``: a front routes each query by its group key to one of N
worker processes, so a GRPO group is judged in one process whichever client sent its samples.

Real processes on 127.0.0.1 (the front and its workers), a judge in this process (``SimServer``:
the real prompt and parser, a rule's scores; or a fake OpenAI server that takes 1 s). Bounded:
a handful of requests, generous timeouts, no wall-clock assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters.openrlhf import OpenRLHFProtocol
from grm_plugin.deadline import Expiry
from grm_plugin.engines.base import GenerationRequest, JudgeEngine
from grm_plugin.results import FailureKind
from grm_plugin.serve_workers import Worker, _send, _Sent, group_key, worker_of
from grm_plugin.server import DEADLINE_HEADER, ServerSettings, create_app
from grm_plugin.testing import SimServer

from .openai_fakes import FakeOpenAIServer, free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve(*flags: str) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """``grm-plugin serve *flags`` on a free port: (base URL, process, its stderr lines so far)
    once it says it listens on the port."""
    port = free_port()
    cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve", "--port", str(port), *flags]
    env = {k: v for k, v in os.environ.items() if k != "GRM_PLUGIN_TOKEN"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while True:
            line = proc.stderr.readline()
            assert line, f"serve exited: {''.join(lines)}"
            lines.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        yield f"http://127.0.0.1:{port}", proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def body(prompt: str, response: str, label: str = "") -> dict:
    return {"query": [prompt + response], "prompts": [prompt], "labels": [label]}


async def post_each(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """Each body from its own client (as OpenRLHF's rollout workers send), all at once."""

    async def one(b: dict) -> httpx.Response:
        async with httpx.AsyncClient(timeout=120) as c:
            return await c.post(url, json=b)

    return await asyncio.gather(*(one(b) for b in bodies))


def prompts_on(worker: int, n: int, workers: int = 2, tag: str = "") -> list[str]:
    """``n`` prompts that the front sends to ``worker``."""
    out, i = [], 0
    while len(out) < n:
        prompt = f"Q{tag}{i}: how? A: "
        if worker_of(group_key(prompt, ""), workers) == worker:
            out.append(prompt)
        i += 1
    return out


def test_workers_2_keeps_8_concurrent_same_prompt_requests_in_one_judgment():
    """8 clients post one sample each of the same prompt: one judgment of the 8 (the judge
    called once, grm_group_size 8 on each), all in one worker; round-robin would split it. (The
    group closes when its 8th sample is in: the long window only keeps a loaded machine from
    splitting it.)"""
    with SimServer() as judge, serve("--server", judge.url, "--samples", "1", "--workers", "2",
                                     "--group-window", "5") as (base, _, _):  # fmt: skip
        prompt = "<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n"
        bodies = [body(prompt, "r" * (i + 1)) for i in range(8)]
        got = asyncio.run(post_each(f"{base}/get_reward", bodies))
        health = httpx.get(f"{base}/health", timeout=30).json()
        calls = judge.stats().requests
    assert [r.status_code for r in got] == [200] * 8
    assert calls == 1
    for i, r in enumerate(got):
        logs = r.json()["extra_logs"]
        assert logs["grm_group_size"] == [8.0]
        assert logs["grm_failed"] == [0.0]
        assert r.json()["rewards"] == [pytest.approx((1 + (i + 1) - 1) / 9)]  # 1 + len, unit
    assert health["status"] == "ok" and health["judgments"] == 1 and health["items"] == 8
    assert sorted(w["items"] for w in health["workers"]) == [0, 8]


def test_queries_of_one_request_go_to_their_prompts_workers_and_come_back_in_order():
    """One request with 8 prompts, 4 on each worker, interleaved: each worker judges its own
    4 and the answer lists (rewards, every extra_logs list) are in query order."""
    a, b = prompts_on(0, 4), prompts_on(1, 4)
    prompts = [p for pair in zip(a, b, strict=True) for p in pair]  # 0 1 0 1 ...
    responses = ["x" * (i + 1) for i in range(8)]
    request = {"query": [p + r for p, r in zip(prompts, responses, strict=True)],
               "prompts": prompts, "labels": [""] * 8}  # fmt: skip
    with SimServer() as judge, serve("--server", judge.url, "--samples", "1", "--workers", "2",
                                     "--group-window", "0") as (base, _, _):  # fmt: skip
        r = httpx.post(f"{base}/get_reward", json=request, timeout=120)
        health = httpx.get(f"{base}/health", timeout=30).json()
    assert r.status_code == 200
    out = r.json()
    # the rule judge's raw score is 1 + len(response): it says which answer is whose
    assert out["extra_logs"]["grm_raw"] == [float(1 + len(x)) for x in responses]
    assert out["rewards"] == [pytest.approx(len(x) / 9) for x in responses]
    assert all(len(v) == 8 for v in out["extra_logs"].values())
    assert out["extra_logs"]["grm_failed"] == [0.0] * 8
    assert [w["items"] for w in health["workers"]] == [4, 4]


def test_a_request_the_workers_refuse_is_refused_by_the_front_as_by_one_process():
    """A malformed body (whole or in one query of a split request) gets the worker's 422; no
    token gets the front's 401; the token in any form a client sends it gets through."""
    flags = ("--server", "http://127.0.0.1:9/v1", "--workers", "2", "--token", "t0k")
    with serve(*flags) as (base, _, _):
        url = f"{base}/get_reward"
        auth = {"Authorization": "Bearer t0k"}
        bad = httpx.post(url, json={"query": "not a list"}, headers=auth, timeout=60)
        split = {"query": ["a", 3], "prompts": prompts_on(0, 1) + prompts_on(1, 1)}
        split_bad = httpx.post(url, json=split, headers=auth, timeout=60)
        no_token = httpx.post(url, json=body("Q: A: ", "x"), timeout=60)
        in_query = httpx.post(f"{url}?token=t0k", json=body("Q: A: ", "x"), timeout=60)
    assert bad.status_code == 422 and bad.json()["error"] == "malformed reward request"
    assert split_bad.status_code == 422
    assert no_token.status_code == 401
    # nothing listens on port 9: the judge fails, the answer is the policy's flagged failure
    assert in_query.status_code == 200 and in_query.json()["extra_logs"]["grm_failed"] == [1.0]


def test_a_worker_killed_mid_run_loses_no_query(tmp_path):
    """12 requests in flight on both workers (the judge takes 1 s); worker 0 is SIGKILLed. The
    front restarts it and resends its queries: every request gets its real judgment."""
    with FakeOpenAIServer(lambda body, call: 1.0) as judge:
        cfg = tmp_path / "grm.json"
        cfg.write_text(json.dumps({
            "engine": {"type": "openai", "base_url": judge.url, "max_retries": 0},
            "sampling": {"samples": 1, "parse_retries": 0, "max_new_tokens": 16},
        }))  # fmt: skip
        prompts = prompts_on(0, 6, tag="k") + prompts_on(1, 6, tag="k")
        bodies = [body(p, "an answer") for p in prompts]
        with serve("--config", str(cfg), "--workers", "2", "--group-window", "0") as (
            base,
            _,
            _,
        ):
            before = httpx.get(f"{base}/health", timeout=30).json()["workers"]

            async def load_then_kill() -> list[httpx.Response]:
                posts = asyncio.ensure_future(post_each(f"{base}/get_reward", bodies))
                end = time.monotonic() + 60
                while len(judge.bodies) < len(bodies):  # all 12 judgments under way
                    assert not posts.done() and time.monotonic() < end
                    await asyncio.sleep(0.01)
                os.kill(before[0]["pid"], signal.SIGKILL)
                return await posts

            got = asyncio.run(load_then_kill())
            after = httpx.get(f"{base}/health", timeout=30).json()
    assert [r.status_code for r in got] == [200] * 12
    for r in got:
        assert r.json()["extra_logs"]["grm_failed"] == [0.0]
        assert r.json()["rewards"] == [pytest.approx(4 / 9)]  # the fake judge's [[5]]
    assert after["status"] == "ok"
    assert after["workers"][0]["restarts"] == 1 and after["workers"][0]["pid"] != before[0]["pid"]
    assert after["workers"][1]["restarts"] == 0
    # the 6 queries of the killed worker were judged again by its restarted self
    assert after["workers"][0]["items"] == 6 and len(judge.bodies) == 18


def test_workers_1_is_the_plain_server_without_a_front():
    with SimServer() as judge, serve("--server", judge.url, "--workers", "1") as (base, _, lines):
        health = httpx.get(f"{base}/health", timeout=30).json()
        r = httpx.post(f"{base}/get_reward", json=body("Q: hi A: ", "hello"), timeout=60)
    assert "workers" not in health and "engine" in health  # the server's own health
    assert lines == [f"grm-plugin: listening on {base}/get_reward\n"]  # no worker sockets
    assert r.status_code == 200 and r.json()["extra_logs"]["grm_failed"] == [0.0]


class _Stuck(JudgeEngine):
    """Never answers (until cancelled)."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_server_answers_within_the_deadline_a_front_forwards():
    """The worker's clock is the front's: given x-grm-deadline, a server with a 150 s deadline
    answers with a timeout failure once those seconds pass (well within the 30 s this test
    waits), not after its own 150 s."""
    protocol = OpenRLHFProtocol.from_section({})
    app = create_app(GenerativeRewardFn(_Stuck()), protocol, ServerSettings(group_window=0))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as c:
            return await c.post(
                "/get_reward", json=body("Q: hi A: ", "hello"), headers={DEADLINE_HEADER: "0.3"}
            )

    r = asyncio.run(asyncio.wait_for(post(), timeout=30))
    assert r.status_code == 200
    assert r.json()["extra_logs"]["grm_failed_timeout"] == [1.0]


def test_queries_of_a_worker_that_does_not_answer_get_the_policys_flagged_failure(tmp_path):
    """Worker 0 hangs (SIGSTOP) with a request in it: at the deadline its queries get the
    failure answer (flagged grm_failed_timeout), the other worker's are judged, in order."""
    with FakeOpenAIServer(lambda body, call: 0.0) as judge:
        cfg = tmp_path / "grm.json"
        cfg.write_text(json.dumps({
            "engine": {"type": "openai", "base_url": judge.url, "max_retries": 0},
            "sampling": {"samples": 1, "parse_retries": 0, "max_new_tokens": 16},
        }))  # fmt: skip
        prompts = [prompts_on(0, 1, tag="h")[0], prompts_on(1, 1, tag="h")[0]]
        request = {"query": [p + "ok" for p in prompts], "prompts": prompts, "labels": ["", ""]}
        flags = ("--config", str(cfg), "--workers", "2", "--deadline", "4", "--group-window", "0")
        with serve(*flags) as (base, _, _):
            pid = httpx.get(f"{base}/health", timeout=30).json()["workers"][0]["pid"]
            os.kill(pid, signal.SIGSTOP)
            try:
                r = httpx.post(f"{base}/get_reward", json=request, timeout=60)
                health = httpx.get(f"{base}/health", timeout=30)
            finally:
                os.kill(pid, signal.SIGCONT)
    assert r.status_code == 200
    logs = r.json()["extra_logs"]
    assert logs["grm_failed"] == [1.0, 0.0] and logs["grm_failed_timeout"] == [1.0, 0.0]
    # abstain: the failed one gets the scale's middle; the judged one the fake judge's [[5]]
    assert r.json()["rewards"] == [0.5, pytest.approx(4 / 9)]
    assert health.status_code == 503 and health.json()["status"] == "worker down"


def _worker(handler) -> Worker:  # noqa: ANN001 - an httpx.MockTransport handler
    w = Worker(0, "unused.sock", [])
    w.client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://w")
    w.ready.set()
    return w


def test_a_query_is_resent_while_its_worker_is_unreachable_and_a_5xx_is_not_retried():
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:  # the worker is dead, then back
            raise httpx.ConnectError("refused", request=request)
        assert 0 < float(request.headers[DEADLINE_HEADER]) <= 30  # the front's time left
        return httpx.Response(200, json={"rewards": [1.0]})

    def broken(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, text="bug")

    async def both() -> tuple[_Sent, _Sent]:
        expiry = Expiry.after(30)
        first = await _send(_worker(flaky), "/get_reward", b"{}", {}, expiry)
        second = await _send(_worker(broken), "/get_reward", b"{}", {}, expiry)
        return first, second

    resent, failed = asyncio.run(both())
    assert resent.status == 200 and json.loads(resent.body) == {"rewards": [1.0]}
    assert failed.status == 0 and failed.kind == FailureKind.ENGINE and "500" in failed.error
    assert len(calls) == 4  # 3 tries for the first, 1 for the second
