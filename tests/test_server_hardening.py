"""Hardening of the reward server beyond tests/test_server.py: what a client that is not
OpenRLHF, or a hostile one, can send; the loopback default and the token at the CLI level.

Every refusal is a 4xx with a JSON ``error`` message, and the server keeps serving afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters.openrlhf import OpenRLHFSettings
from grm_plugin.cli import serve as serve_mod
from grm_plugin.cli.main import build_parser
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import RuleJudgeEngine

PROMPT = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
GOOD = {"query": [PROMPT + "Paris<|im_end|>"], "prompts": [PROMPT], "labels": [""]}
JSON = {"content-type": "application/json"}


def client(**settings: object) -> TestClient:
    # raise_server_exceptions=False: an unhandled error must show as the 500 a client would get
    app = create_app(GenerativeRewardFn(RuleJudgeEngine()), ServerSettings(**settings))
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
    """``grm-plugin serve`` up to uvicorn.run, with a rule judge; returns run's arguments."""
    pytest.importorskip("uvicorn")
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
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
    assert fake_uvicorn["timeout_graceful_shutdown"] > OpenRLHFSettings().deadline
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
