"""Reward-server defects of issue 21 (items 6, 10, 11, 12, 17, 21 and 27), each reproduced as a
client or an operator met it: over real 127.0.0.1 sockets where the defect lives in HTTP, in
process otherwise. Bounded in count and time; no assertion on how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin import server as server_mod
from grm_plugin.adapters.openrlhf import OpenRLHFProtocol
from grm_plugin.cli import serve as serve_mod
from grm_plugin.cli.main import build_parser, main
from grm_plugin.config import JudgeConfig
from grm_plugin.deadline import Expiry
from grm_plugin.engines import GenerationRequest
from grm_plugin.grouping import GroupBatcher, RewardItem
from grm_plugin.results import FailureKind
from grm_plugin.server import ServerSettings, create_app, load_protocol, plugin_sections
from grm_plugin.testing import FailingEngine, RuleJudgeEngine

from .openai_fakes import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"


def body(answer: str) -> dict:
    return {"query": [PROMPT + answer + "<|im_end|>"], "prompts": [PROMPT], "labels": [""]}


@contextmanager
def running(app: Any, port: int) -> Iterator[str]:
    """``app`` on a real 127.0.0.1 socket (uvicorn in a thread); its loggers propagate to the
    root logger (log_config=None), so caplog sees what an operator's log would show."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
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


def raw_post(port: int, payload: bytes, pieces: int, pause: float, before_last: Callable) -> dict:
    """POST ``payload`` to /get_reward over a raw socket, ``pieces`` pieces ``pause`` s apart
    (a client on a slow link); ``before_last()`` runs before the last piece. The JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            b"POST /get_reward HTTP/1.1\r\nHost: grm\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        step = -(-len(payload) // pieces)
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
        for chunk in chunks[:-1]:
            s.sendall(chunk)
            time.sleep(pause)
        before_last()
        s.sendall(chunks[-1])
        answer = b""
        while data := s.recv(65536):
            answer += data
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(content)


# ------------------------------------------------------------------ item 6: slow uploads


class SlowJudge(RuleJudgeEngine):
    """A rule judge that takes ``seconds`` per judgment."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def generate(self, request: GenerationRequest) -> list[str]:
        await asyncio.sleep(self.seconds)
        return await super().generate(request)


def test_a_slowly_uploaded_body_does_not_time_out_its_group():
    """Issue 21 item 6: the clock of a request started at its headers and a group was judged
    within the earliest deadline of its members, so one client uploading its body for most of
    the deadline made the normal requests of its prompt time out with it. Here the slow body
    takes 3.5 s of a 6 s deadline, the judgment 2 s: every request must get its judgment."""
    engine = SlowJudge(2.0)
    port = free_port()
    settings = ServerSettings(port=port, deadline=6, group_window=1.5)
    app = create_app(GenerativeRewardFn(engine), OpenRLHFProtocol(), settings)
    normal: dict[str, dict] = {}
    threads: list[threading.Thread] = []

    with running(app, port) as url:

        def post(answer: str) -> None:
            normal[answer] = httpx.post(f"{url}/get_reward", json=body(answer), timeout=60).json()

        def send_the_normal_ones() -> None:
            for answer in ("bb", "ccc"):  # same prompt: one group with the slow one
                threads.append(threading.Thread(target=post, args=(answer,)))
                threads[-1].start()
            time.sleep(0.3)  # they join the group first; the slow body completes within window

        slow = raw_post(port, json.dumps(body("a")).encode(), 8, 0.5, send_the_normal_ones)
        for t in threads:
            t.join(60)
    for answer in (slow, normal["bb"], normal["ccc"]):
        logs = answer["extra_logs"]
        assert logs["grm_failed_timeout"] == [0.0] and logs["grm_failed"] == [0.0], answer
        assert logs["grm_group_size"] == [3.0]  # judged together, as same-prompt samples are
    assert len(engine.requests) == 1


def test_a_group_member_with_a_short_deadline_does_not_cut_the_others():
    """The group's judgment runs for its latest member; each member still gets its answer (a
    timeout failure when too late) by its own deadline."""
    engine = SlowJudge(1.0)

    async def run() -> list:
        batcher = GroupBatcher(GenerativeRewardFn(engine), window=0.05, max_size=2)
        short = batcher.judge(RewardItem("q", "a", group="g"), expiry=Expiry.after(0.3))
        long = batcher.judge(RewardItem("q", "bb", group="g"), expiry=Expiry.after(30))
        return await asyncio.gather(short, long)

    short, long = asyncio.run(run())
    assert short.result.failure_kind is FailureKind.TIMEOUT
    assert not long.result.failed and long.score == 3.0  # 1 + len("bb")


# ------------------------------------------------------------ item 10: too many queries


class CountingProtocol(OpenRLHFProtocol):
    decoded: list[int] = []

    def decode(self, data: Any) -> Any:
        CountingProtocol.decoded.append(len(data.get("query", [])))
        return super().decode(data)


def test_too_many_queries_are_refused_before_the_list_is_decoded(caplog):
    """Issue 21 item 10: 4.2 M queries were decoded, cut and logged (one WARNING each) before
    the 413. The body is now read list element by list element and refused at max_queries+1."""
    CountingProtocol.decoded = []
    app = create_app(
        GenerativeRewardFn(RuleJudgeEngine()),
        CountingProtocol(),
        ServerSettings(group_window=0, max_queries=8),
    )
    c = TestClient(app)
    caplog.set_level(logging.INFO)
    r = c.post("/get_reward", json={"query": ["no prompt: a warning each"] * 50_000})
    assert r.status_code == 413 and "8 queries" in r.json()["error"]
    assert CountingProtocol.decoded == []  # the protocol never saw the list
    assert len([rec for rec in caplog.records if rec.levelno >= logging.WARNING]) <= 1
    for lists in ({"query": ["a"] * 8, "prompts": ["x"] * 9}, ["a"] * 9):  # any top-level list
        assert c.post("/get_reward", json=lists).status_code == 413
    many_keys = {"query": ["a"], **{f"k{i}": 0 for i in range(100_000)}}  # each read in Python
    r = c.post("/get_reward", json=many_keys)
    assert r.status_code == 413 and f"{server_mod.MAX_FIELDS} fields" in r.json()["error"]
    assert c.post("/get_reward", json=body("ok")).status_code == 200
    assert c.post("/get_reward", json={"query": ["a"] * 8}).status_code == 200  # inclusive


@pytest.mark.parametrize(
    "text",
    [
        '{"query": ["a", "b"], "prompts": ["x", "y"], "labels": [1, {"k": [1, 2]}]}',
        ' \n{ "query" :[ "a" ,"b"] , "n": null, "t": true, "f": 1.5e3 }\t',
        '{"query": [], "x": {}, "y": [[], [[1]]], "query": ["dup"]}',
        '{"s": "\\u00e9\\"]", "l": ["[", "]", ","]}',
        "[1, 2, [3, 4]]",
        "[]",
        "{}",
        '"text"',
        "3",
        '{"x": NaN}',
    ],
)
def test_bounded_reading_gives_what_json_loads_gives(text):
    assert server_mod.loads_bounded(text, 1024) == json.loads(text) or text == '{"x": NaN}'
    if text == '{"x": NaN}':
        assert str(server_mod.loads_bounded(text, 1024)) == str(json.loads(text))


@pytest.mark.parametrize(
    "text",
    ['{"a": [1, 2', '{"a": [1 2]}', '{"a" [1]}', "{a: 1}", '{"a": 1,}', "[1,]", "{} x", "", "["],
)
def test_bounded_reading_refuses_what_json_loads_refuses(text):
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        server_mod.loads_bounded(text, 1024)


# ------------------------------------------------------------------------ item 11: token


def test_a_token_with_surrounding_whitespace_works_as_sent():
    """Issue 21 item 11: HTTP drops a header value's surrounding whitespace, so a token read with
    a trailing newline or space started the server and every request got 401."""
    settings = ServerSettings(group_window=0, token="s3cret \n")
    c = TestClient(create_app(GenerativeRewardFn(RuleJudgeEngine()), OpenRLHFProtocol(), settings))
    bearer = {"Authorization": "Bearer s3cret"}  # what arrives, whatever the client sent
    assert c.post("/get_reward", json=body("x"), headers=bearer).is_success
    assert c.post("/get_reward?token=s3cret", json=body("x")).is_success
    assert c.post("/get_reward", json=body("x")).status_code == 401


@pytest.mark.parametrize("token", ["pässwort", "tok\u00a0en", "tab\there"])
def test_a_token_http_cannot_carry_is_refused_at_start(monkeypatch, capsys, token):
    with pytest.raises(ValueError, match="ASCII"):
        ServerSettings(token=token)

    def no_model(*_: Any, **__: Any) -> None:
        raise AssertionError("the judge must not load for a server that cannot start")

    monkeypatch.setattr(GenerativeRewardFn, "from_config", classmethod(no_model))
    assert main(["serve", "--server", "http://127.0.0.1:9/v1", "--token", token]) == 2
    assert "ASCII" in capsys.readouterr().err


# ------------------------------------------------- item 12: a too-long prompt, a disconnect


class TinyContextJudge(RuleJudgeEngine):
    context_window = 64  # the judge prompt alone does not fit


def test_a_prompt_too_long_for_the_judge_is_bad_input_in_the_server_and_score_batch():
    rm = GenerativeRewardFn(TinyContextJudge())
    [result] = rm.score_batch(["Q"], [["an answer"]])
    app = create_app(rm, OpenRLHFProtocol(), ServerSettings(group_window=0))
    logs = TestClient(app).post("/get_reward", json=body("Paris")).json()["extra_logs"]
    assert result.failure_kind is FailureKind.BAD_INPUT
    assert logs["grm_failed_bad_input"] == [1.0] and logs["grm_failed_engine"] == [0.0]


def test_a_client_leaving_mid_body_is_one_info_line_not_a_traceback(caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    app = create_app(GenerativeRewardFn(RuleJudgeEngine()), OpenRLHFProtocol(), ServerSettings())
    with running(app, port) as url:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /get_reward HTTP/1.1\r\nHost: grm\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"query": ["'
            )
            time.sleep(0.3)  # the app is reading the body
        end = time.monotonic() + 10
        while not any("disconnected" in r.getMessage() or r.exc_info for r in caplog.records):
            assert time.monotonic() < end, "the server said nothing of the disconnect"
            time.sleep(0.05)
        assert httpx.post(f"{url}/get_reward", json=body("ok"), timeout=30).is_success
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    said = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


# ------------------------------------------------------------------ item 17: /health


class SwitchableJudge(RuleJudgeEngine):
    failing = True

    async def generate(self, request: GenerationRequest) -> list[str]:
        if self.failing:
            return await FailingEngine().generate(request)
        return await super().generate(request)


def test_health_goes_non_ok_when_recent_judgments_all_fail_and_recovers():
    """Issue 21 item 17: /health said ok while every judgment failed (a judge server down)."""
    engine = SwitchableJudge()
    rm = GenerativeRewardFn(engine, parse_retries=0)
    c = TestClient(create_app(rm, OpenRLHFProtocol(), ServerSettings(group_window=0)))
    assert c.get("/health").status_code == 200  # nothing judged yet: nothing to say
    for i in range(3):
        answer = c.post("/get_reward", json=body("x" * (i + 1))).json()
        assert answer["extra_logs"]["grm_failed"] == [1.0]
    r = c.get("/health")
    assert r.status_code == 503 and r.json()["status"] != "ok"
    assert r.json()["judge"]["recent"] == 3 and r.json()["judge"]["failed"] == 3
    assert r.json()["judge"]["last_error"]
    engine.failing = False
    assert c.post("/get_reward", json=body("y")).json()["extra_logs"]["grm_failed"] == [0.0]
    r = c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["judge"]["success_rate"] == pytest.approx(1 / 4)


# ---------------------------------------------- item 21: the docstring config, the temp file


def test_the_plugin_config_example_in_the_docstring_loads():
    doc = plugin_sections.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n")[1]
    judge, section, server = plugin_sections(yaml.safe_load(block), "openrlhf")
    protocol = load_protocol("openrlhf").from_section(section)
    assert protocol.failure(protocol.decode({"query": ["a"]})[1], FailureKind.ENGINE, "x")
    ServerSettings.model_validate(server)
    assert isinstance(judge, JudgeConfig)


def test_serve_applies_judge_flags_to_the_section_without_a_file(monkeypatch):
    def no_files(*_: Any, **__: Any) -> None:
        raise AssertionError("no temporary file is needed to apply flags to a section")

    monkeypatch.setattr("tempfile.TemporaryDirectory", no_files)
    args = build_parser().parse_args(["serve", "--server", "http://127.0.0.1:9/v1", "-k", "3"])
    cfg = serve_mod._judge_config(args, JudgeConfig.model_validate({"sampling": {"seed": 7}}))
    assert (cfg.sampling.samples, cfg.sampling.seed) == (3, 7)
    assert cfg.engine.type == "openai"


# ------------------------------------------------------------- item 27: "listening on"


def test_serve_says_where_it_listens_once_ready():
    port = free_port()
    cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve"]
    cmd += ["--server", "http://127.0.0.1:9/v1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != serve_mod.TOKEN_ENV}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.daemon = True
    reader.start()
    try:
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < end, "".join(lines)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        end = time.monotonic() + 5  # printed before the first request can be served
        url = f"http://127.0.0.1:{port}/get_reward"
        while not any(re.search(rf"listening on {re.escape(url)}\b", ln) for ln in lines):
            assert time.monotonic() < end, "".join(lines)
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_full_request_logs_one_line_not_one_per_query(caplog):
    """Issue 21 item 10, the rest: a valid request of max_queries queries whose prompts are not
    found (and whose judgments fail) logged two WARNING lines per query. Now one line each kind
    per request, counting the queries."""
    app = create_app(
        GenerativeRewardFn(FailingEngine()),
        OpenRLHFProtocol(),
        ServerSettings(group_window=0, max_queries=64),
    )
    caplog.set_level(logging.INFO)
    queries = [f"query {i} without its prompt" for i in range(64)]
    r = TestClient(app).post(
        "/get_reward", json={"query": queries, "prompts": ["not in it"] * 64, "labels": [""] * 64}
    )
    assert r.status_code == 200 and len(r.json()["rewards"]) == 64
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings) <= 3, warnings
    assert any("prompt not found in 64 of 64 queries" in m for m in warnings), warnings
