"""Hardening of the reward server beyond tests/test_server.py: what a client that is not
OpenRLHF, or a hostile one, can send; the loopback default and the token at the CLI level.

Every refusal is a 4xx with a JSON ``error`` message, and the server keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters.openrlhf import DEFAULT_DEADLINE_S, OpenRLHFProtocol
from grm_plugin.cli import serve as serve_mod
from grm_plugin.cli.main import build_parser, main
from grm_plugin.engines import GenerationRequest
from grm_plugin.engines.base import EngineHealth
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import RuleJudgeEngine

PROMPT = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
GOOD = {"query": [PROMPT + "Paris<|im_end|>"], "prompts": [PROMPT], "labels": [""]}
JSON = {"content-type": "application/json"}


def client(engine: RuleJudgeEngine | None = None, **settings: object) -> TestClient:
    # raise_server_exceptions=False: an unhandled error must show as the 500 a client would get
    rm = GenerativeRewardFn(engine or RuleJudgeEngine())
    app = create_app(rm, OpenRLHFProtocol(), ServerSettings(group_window=0, **settings))
    return TestClient(app, raise_server_exceptions=False)


def assert_refused(r: httpx.Response, status: int, says: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and error
    if says is not None:
        assert says in error


# ------------------------------------------------------------------------------ body size


def test_chunked_body_without_length_is_cut_off_at_the_limit():
    """No Content-Length to refuse up front: the server stops reading past the limit."""
    c = client(max_body_bytes=4096)

    def chunks() -> Iterator[bytes]:  # a generator: sent chunked, with no Content-Length
        for _ in range(64):  # 64 KiB in all, 16x the limit
            yield b"[" * 1024

    r = c.post("/get_reward", content=chunks(), headers=JSON)
    assert_refused(r, 413, "4096 bytes")
    assert c.post("/get_reward", json=GOOD).status_code == 200


def test_a_large_body_within_the_limit_is_judged():
    long_answer = "word " * 200_000  # ~1 MB: a long rollout is not refused
    body = {"query": [PROMPT + long_answer], "prompts": [PROMPT], "labels": [""]}
    r = client().post("/get_reward", json=body)
    assert r.status_code == 200
    assert len(r.json()["rewards"]) == 1


def test_max_queries_is_inclusive():
    c = client(max_queries=3)
    assert c.post("/get_reward", json={"query": ["a", "b", "c"]}).status_code == 200
    assert_refused(c.post("/get_reward", json={"query": ["a"] * 4}), 413, "3 queries")


# ------------------------------------------------------------------------------ malformed bodies


def test_deeply_nested_json_is_400_not_a_crash():
    c = client()
    nested = b"[" * 100_000 + b"]" * 100_000
    assert_refused(c.post("/get_reward", content=nested, headers=JSON), 400, "nested")
    label = b'{"query": ["a"], "labels": [' + nested + b"]}"
    assert_refused(c.post("/get_reward", content=label, headers=JSON), 400, "nested")
    assert c.post("/get_reward", json=GOOD).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"null",
        b"3",
        b'[{"query": ["a"]}]',
        b'{"query": null}',
        b'{"query": [["a"]]}',
        b'{"query": [{"text": "a"}]}',
        b'{"query": ["a"], "prompts": "a"}',
        b'{"query": ["a"], "labels": "x"}',
        b'{"query": ["a", "b"], "prompts": ["a"]}',
        b'{"Query": ["a"]}',
    ],
)
def test_wrong_json_types_and_missing_fields_are_422(raw):
    assert_refused(client().post("/get_reward", content=raw, headers=JSON), 422)


def test_validation_errors_say_which_field_and_do_not_echo_the_input():
    secret = "PRIVATE-ROLLOUT-TEXT " * 1000
    r = client().post("/get_reward", json={"query": [secret, 5]})
    assert_refused(r, 422, "malformed")
    assert "PRIVATE-ROLLOUT-TEXT" not in r.text  # a 422 must not send rollouts back (or to logs)
    assert any(d["loc"][:1] == ["query"] for d in r.json()["detail"])


@pytest.mark.parametrize(
    "raw",
    [
        '{"query": ["caf\u00e9"]}'.encode("latin-1"),
        '{"query": ["caf\u00e9"]}'.encode("utf-16"),  # a BOM and NUL bytes
        b'{"query": ["\xed\xa0\x80"]}',  # an encoded surrogate: not valid UTF-8
    ],
)
def test_non_utf8_bodies_are_400_with_a_clear_message(raw):
    assert_refused(client().post("/get_reward", content=raw, headers=JSON), 400, "UTF-8")


def test_utf8_beyond_ascii_is_fine():
    body = {"query": [PROMPT + "Париж 巴黎 🇫🇷"], "prompts": [PROMPT], "labels": ["Париж"]}
    assert client().post("/get_reward", json=body).status_code == 200


# ------------------------------------------------------------------------------ routes


def test_only_the_reward_and_health_routes_exist():
    c = client()
    for path in ("/docs", "/redoc", "/openapi.json", "/admin"):
        assert c.get(path).status_code == 404
    assert c.get("/get_reward").status_code == 405
    assert c.put("/get_reward", json=GOOD).status_code == 405


# ------------------------------------------------------------------------------ token


def test_token_is_checked_on_every_reward_route_and_never_echoed():
    c = client(token="tok-123")
    for path in ("/get_reward", "/"):
        r = c.post(path, json=GOOD)
        assert_refused(r, 401, "token")
        assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Basic tok-123", "Bearer", "Bearer tok-1234", "Bearer tok-12", "tok-123"):
        r = c.post("/get_reward", json=GOOD, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert "tok-123" not in r.text
    ok = c.post("/get_reward", json=GOOD, headers={"Authorization": "bearer  tok-123 "})
    assert ok.status_code == 200  # the scheme is case-insensitive, spaces around are ignored


def test_the_token_is_checked_before_the_body():
    c = client(token="t", max_body_bytes=1024)
    # a too-large body without the token is 401, not 413: no work and no limits for strangers
    assert c.post("/get_reward", content=b"x" * 5000, headers=JSON).status_code == 401


# ------------------------------------------------------------------------------ CLI defaults


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``grm-plugin serve`` up to running uvicorn, with a rule judge; returns its arguments."""
    pytest.importorskip("uvicorn")

    seen: dict = {}
    monkeypatch.setattr(serve_mod, "run_uvicorn", lambda app, path, **kw: seen.update(kw, app=app))
    monkeypatch.setattr(
        GenerativeRewardFn,
        "from_config",
        classmethod(lambda cls, cfg, **_: GenerativeRewardFn(RuleJudgeEngine())),
    )
    monkeypatch.delenv(serve_mod.TOKEN_ENV, raising=False)
    return seen


def serve(argv: list[str]) -> int:
    args = build_parser().parse_args(["serve", "--server", "http://127.0.0.1:9/v1", *argv])
    return serve_mod.run(args)


def test_serve_binds_loopback_by_default_and_keeps_urls_out_of_logs(fake_uvicorn, capsys):
    assert serve([]) == 0
    assert fake_uvicorn["host"] == "127.0.0.1"
    assert fake_uvicorn["access_log"] is False  # ?token=... would be written to the access log
    # in-flight requests get up to their deadline to finish on SIGTERM, and no longer
    assert fake_uvicorn["timeout_graceful_shutdown"] > DEFAULT_DEADLINE_S
    assert "warning" not in capsys.readouterr().err


def test_serve_warns_when_public_without_token_only(fake_uvicorn, capsys, monkeypatch):
    assert serve(["--host", "0.0.0.0"]) == 0
    assert "without a token" in capsys.readouterr().err
    assert serve(["--host", "0.0.0.0", "--token", "t"]) == 0
    assert "without a token" not in capsys.readouterr().err
    monkeypatch.setenv(serve_mod.TOKEN_ENV, "from-env")
    assert serve(["--host", "0.0.0.0"]) == 0
    assert "without a token" not in capsys.readouterr().err
    r = TestClient(fake_uvicorn["app"]).post("/get_reward", json=GOOD)
    assert r.status_code == 401  # the env token is enforced, not just silencing the warning


def test_serve_uses_the_guarded_protocol_with_limits(fake_uvicorn):
    assert serve(["--header-timeout", "3", "--max-connections", "50"]) == 0
    protocol = fake_uvicorn["http"]
    assert protocol.__name__ == "GuardedH11Protocol"  # header deadline + connection cap


# ------------------------------------------------------------------------------ issue 13, 4-8


@pytest.mark.parametrize("how", ["env", "flag"])
def test_an_empty_token_is_refused_at_startup(fake_uvicorn, monkeypatch, capsys, how):
    """GRM_PLUGIN_TOKEN="" used to turn auth off silently (every token-less request matched)."""
    argv = ["serve", "--server", "http://127.0.0.1:9/v1"]
    if how == "env":
        monkeypatch.setenv(serve_mod.TOKEN_ENV, "")
    else:
        argv += ["--token", "  "]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "empty" in err and ("GRM_PLUGIN_TOKEN" in err or "--token" in err)
    assert "app" not in fake_uvicorn  # nothing was served
    with pytest.raises(ValueError, match="empty"):
        ServerSettings(token="")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_fallback_reward_is_refused_at_startup(fake_uvicorn, capsys, value):
    """--fallback-reward nan used to start, then make every fallback answer an HTTP 500."""
    with pytest.raises(SystemExit) as e:
        main(["serve", "--server", "http://127.0.0.1:9/v1", f"--fallback-reward={value}"])
    assert e.value.code == 2
    assert "finite" in capsys.readouterr().err
    assert "app" not in fake_uvicorn


def test_non_finite_fallback_in_a_config_file_is_refused_at_startup(fake_uvicorn, tmp_path, capsys):
    cfg = tmp_path / "grm.yaml"
    cfg.write_text("openrlhf: {policy: {on_failure: fallback, fallback: .nan}}\n")
    assert main(["serve", "--server", "http://127.0.0.1:9/v1", "--config", str(cfg)]) == 2
    assert "finite" in capsys.readouterr().err
    assert "app" not in fake_uvicorn


def test_a_huge_json_integer_is_400_not_500():
    """Python refuses to convert integers of more than 4,300 digits: that is the client's fault."""
    c = client()
    for where in (b'{"query": ["a"], "labels": [%s]}', b'{"query": [%s]}'):
        raw = where % (b"9" * 5000)
        assert_refused(c.post("/get_reward", content=raw, headers=JSON), 400, "Python")
    assert c.post("/get_reward", json=GOOD).status_code == 200


def test_health_reflects_a_dead_engine():
    class DeadEngine(RuleJudgeEngine):
        def health(self) -> EngineHealth:
            return EngineHealth(ok=False, reason="batching worker crashed")

    r = client(DeadEngine()).get("/health")
    assert r.status_code == 503
    assert r.json()["engine"] == {"ok": False, "reason": "batching worker crashed"}
    assert client().get("/health").json()["engine"]["ok"] is True


def test_a_15_mib_query_does_not_stall_other_requests():
    """One 15 MiB query judged with k=8 used to hold the event loop for seconds (the parser
    squashed the whole response for every sample). Now the response is cut at
    max_response_chars before anything reads it, and decoding runs in a thread. A small request
    sent while the big one is being judged must be answered long before the old stall ends."""
    import threading
    import time

    small_latency: list[float] = []
    big_started = threading.Event()

    class Judge(RuleJudgeEngine):
        async def generate(self, request: GenerationRequest) -> list[str]:
            if len(request.messages[-1]["content"]) > 50_000:
                big_started.set()
            return await super().generate(request)

    rm = GenerativeRewardFn(Judge(), samples=8, parse_retries=0)
    app = create_app(rm, OpenRLHFProtocol(), ServerSettings(group_window=0))

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            big_body = {"query": [PROMPT + "word " * (3 * 1024 * 1024)], "prompts": [PROMPT]}
            big = asyncio.ensure_future(c.post("/get_reward", json=big_body))
            while not big_started.is_set():
                assert not big.done()
                await asyncio.sleep(0.001)
            t0 = time.monotonic()
            small = await c.post("/get_reward", json=GOOD)
            small_latency.append(time.monotonic() - t0)
            return await big, small

    big, small = asyncio.run(run())
    assert small.status_code == big.status_code == 200
    assert big.json()["extra_logs"]["grm_truncated"] == [1.0]
    # generous: before the fix the small request waited for the big one's ~8-20 s of parsing
    assert small_latency[0] < 5.0, small_latency
