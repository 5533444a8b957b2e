"""The OpenRLHF reward server and adapter, without OpenRLHF installed (default test suite).

The same protocol is exercised with OpenRLHF's own client in tests/adapters/openrlhf.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters import openrlhf as adapter_mod
from grm_plugin.adapters.openrlhf import (
    LOG_KEYS,
    OpenRLHFReward,
    OpenRLHFSettings,
    ResponseExtractor,
    label_to_reference,
    load_plugin_config,
)
from grm_plugin.cli.main import build_parser
from grm_plugin.cli.serve import build_settings
from grm_plugin.engines import JudgeEngine
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import (
    FailingEngine,
    RuleJudgeEngine,
    length_score,
    shown_responses,
)

PROMPT = "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"


def body(answer: str, label: str = "", prompt: str = PROMPT) -> dict:
    """An OpenRLHF request for one sample: query = prompt + answer + EOS (+ pad)."""
    return {"query": [prompt + answer + "<|im_end|><|endoftext|>"], "prompts": [prompt],
            "labels": [label]}  # fmt: skip


def client(engine: JudgeEngine, **kwargs: object) -> TestClient:
    openrlhf = {k: kwargs.pop(k) for k in list(kwargs) if k in OpenRLHFSettings.model_fields}
    settings = ServerSettings(openrlhf=OpenRLHFSettings(**openrlhf), **kwargs)
    return TestClient(create_app(GenerativeRewardFn(engine), settings))


class BlockingEngine(RuleJudgeEngine):
    """A RuleJudgeEngine that holds every call until ``release`` is set; counts calls in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release: asyncio.Event | None = None
        self.active = 0
        self.max_active = 0

    async def generate(self, request):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            assert self.release is not None
            await self.release.wait()
            return await super().generate(request)
        finally:
            self.active -= 1


# --------------------------------------------------------------------------------- rewards/flags


@pytest.mark.parametrize(("scale", "expected"), [("unit", 5 / 9), ("raw", 6.0)])
def test_reward_is_the_scaled_judge_score(scale, expected):
    engine = RuleJudgeEngine()
    r = client(engine, reward_scale=scale).post("/get_reward", json=body("Paris"))
    assert r.status_code == 200
    out = r.json()
    assert out["rewards"] == out["scores"] == [pytest.approx(expected)]
    assert out["extra_logs"] == {k: [0.0] for k in LOG_KEYS}
    assert [shown_responses(q) for q in engine.requests] == [["Paris"]]


def test_root_path_answers_like_get_reward():
    r = client(RuleJudgeEngine()).post("/", json=body("Lyon"))
    assert r.json()["rewards"] == [pytest.approx((length_score("Lyon") - 1) / 9)]


def test_judge_failure_is_fallback_and_flag_with_http_200():
    r = client(FailingEngine(), fallback_reward=-1.0).post("/get_reward", json=body("Paris"))
    assert r.status_code == 200
    out = r.json()
    assert out["rewards"] == out["scores"] == [-1.0]
    assert out["extra_logs"]["grm_failed"] == [1.0]
    assert out["extra_logs"]["grm_timeout"] == [0.0]


def test_several_queries_in_one_request_keep_their_order():
    engine = RuleJudgeEngine()
    req = {"query": [PROMPT + "ab", PROMPT + "", PROMPT + "abcdef"], "prompts": [PROMPT] * 3}
    out = client(engine).post("/get_reward", json=req).json()
    assert out["rewards"] == pytest.approx([2 / 9, 0.0, 6 / 9])
    assert out["extra_logs"]["grm_failed"] == [0.0, 1.0, 0.0]
    assert out["extra_logs"]["grm_empty_response"] == [0.0, 1.0, 0.0]


def test_label_becomes_reference_and_non_string_labels_are_accepted():
    engine = RuleJudgeEngine()
    c = client(engine)
    c.post("/get_reward", json=body("Paris", label="Paris is the capital"))
    c.post("/get_reward", json={**body("4"), "labels": [4]})
    c.post("/get_reward", json=body("Paris", label=""))
    texts = [q.messages[-1]["content"] for q in engine.requests]
    assert "\nParis is the capital\n" in texts[0]
    assert "## Reference answer" in texts[1] and "\n4\n" in texts[1]
    assert "## Reference answer" not in texts[2]


def test_deadline_gives_fallback_and_timeout_flag():
    engine = BlockingEngine()  # never released: the judge hangs

    async def run() -> dict:
        engine.release = asyncio.Event()
        app = create_app(
            GenerativeRewardFn(engine), ServerSettings(openrlhf=OpenRLHFSettings(deadline=0.2))
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post("/get_reward", json=body("Paris"))
            assert r.status_code == 200
            return r.json()

    out = asyncio.run(run())
    assert out["rewards"] == [0.0]
    assert out["extra_logs"]["grm_timeout"] == [1.0]
    assert out["extra_logs"]["grm_failed"] == [1.0]


def test_concurrency_limit_queues_requests():
    engine = BlockingEngine()

    async def run() -> list[dict]:
        engine.release = asyncio.Event()
        app = create_app(GenerativeRewardFn(engine), ServerSettings(max_concurrent=1))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            posts = [asyncio.ensure_future(c.post("/get_reward", json=body(a))) for a in "ab"]
            while (await c.get("/health")).json()["in_flight"] < 2 or engine.active < 1:
                await asyncio.sleep(0.01)
            assert engine.active == 1  # the second request waits for the slot
            engine.release.set()
            return [(await p).json() for p in posts]

    outs = asyncio.run(run())
    assert [o["rewards"] for o in outs] == [[pytest.approx(1 / 9)]] * 2
    assert engine.max_active == 1


# ------------------------------------------------------------------------------- auth and 4xx


def test_bearer_token_or_url_token_required():
    c = client(RuleJudgeEngine(), token="s3cret")
    assert c.post("/get_reward", json=body("x")).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert c.post("/get_reward", json=body("x"), headers=bad).status_code == 401
    assert c.post("/get_reward?token=wrong", json=body("x")).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert c.post("/get_reward", json=body("x"), headers=good).status_code == 200
    assert c.post("/get_reward?token=s3cret", json=body("x")).status_code == 200
    assert c.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b'{"query": ["\xff"]}', 400),
        (b'"just a string"', 422),
        (b'{"prompts": ["a"]}', 422),
        (b'{"query": "ab"}', 422),
        (b'{"query": [1]}', 422),
        (b'{"query": ["a"], "prompts": [null]}', 422),
        (b'{"query": ["ab", "cd"], "labels": [""]}', 422),
        (b'{"query": []}', 422),
    ],
)
def test_malformed_request_is_4xx_with_message(raw, status):
    c = client(RuleJudgeEngine())
    r = c.post("/get_reward", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]
    assert c.post("/get_reward", json=body("ok")).status_code == 200  # still serving


def test_too_large_requests_are_413():
    c = client(RuleJudgeEngine(), max_body_bytes=1024, max_queries=2)
    assert c.post("/get_reward", json=body("x" * 2000)).status_code == 413
    three = {"query": ["a", "b", "c"]}
    assert c.post("/get_reward", json=three).status_code == 413


# ------------------------------------------------------------------------- response extraction


def test_extractor_cuts_prompt_and_special_tokens_exactly():
    ex = ResponseExtractor(["<|im_end|>", "<|endoftext|>"])
    query = PROMPT + " Paris\n\n is <b>it</b> <|im_end|><|endoftext|><|endoftext|>"
    assert ex.response(query, PROMPT) == (" Paris\n\n is <b>it</b> ", True)


def test_extractor_finds_the_end_of_a_left_truncated_prompt():
    ex = ResponseExtractor(["<|im_end|>"])
    prompt = "<|im_start|>user\n" + "long context " * 50 + "<|im_end|>\n<|im_start|>assistant\n"
    truncated = prompt[200:]  # OpenRLHF keeps the last tokens of a too-long prompt
    assert ex.response(truncated + "Paris<|im_end|>", prompt) == ("Paris", True)


def test_extractor_flags_a_prompt_it_cannot_find():
    ex = ResponseExtractor(["<|im_end|>"])
    assert ex.response("something else<|im_end|>", "an unrelated prompt") == (
        "something else",
        False,
    )


def test_prompt_mismatch_is_flagged_in_extra_logs():
    req = {"query": ["abc<|im_end|>"], "prompts": ["zzz"]}
    out = client(RuleJudgeEngine()).post("/", json=req).json()
    assert out["extra_logs"]["grm_prompt_mismatch"] == [1.0]
    assert out["rewards"] == [pytest.approx(3 / 9)]  # the whole query, cleaned, was judged


def test_chat_templates_become_messages_for_the_judge():
    ex = ResponseExtractor(["<|im_end|>", "<|eot_id|>"])
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n" + PROMPT
    assert ex.conversation(chatml) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    llama3 = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ex.conversation(llama3) == [{"role": "user", "content": "Hi there"}]
    assert ex.conversation("Question: 2+2?<|im_end|>") == "Question: 2+2?"


def test_label_to_reference():
    assert label_to_reference("") is None
    assert label_to_reference("  ") is None
    assert label_to_reference(None) is None
    assert label_to_reference("42") == "42"
    assert label_to_reference(42) == "42"
    assert label_to_reference({"answer": "x"}) == '{"answer": "x"}'


# ------------------------------------------------------------------------- sync API and config


def test_sync_reward_from_many_threads_shares_one_loop():
    engine = RuleJudgeEngine()
    adapter = OpenRLHFReward(GenerativeRewardFn(engine))
    answers = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda a: adapter.reward([PROMPT + a], [PROMPT], [""]), answers))
    assert [o["rewards"][0] for o in outs] == pytest.approx([len(a) / 9 for a in answers])


def test_reward_func_without_config_says_what_to_set(monkeypatch):
    monkeypatch.delenv("GRM_PLUGIN_CONFIG", raising=False)
    monkeypatch.setattr(adapter_mod, "_default", None)
    with pytest.raises(RuntimeError, match="GRM_PLUGIN_CONFIG"):
        adapter_mod.reward_func(["q"], ["p"], [""])


def test_plugin_config_plain_or_with_sections(tmp_path):
    plain = {"sampling": {"samples": 3}}
    judge, adapter, server = load_plugin_config(plain)
    assert judge.sampling.samples == 3 and adapter == OpenRLHFSettings() and server == {}
    path = tmp_path / "grm.yaml"
    path.write_text(
        "judge: {sampling: {samples: 2}}\n"
        "openrlhf: {reward_scale: raw, fallback_reward: 0.5}\n"
        "server: {port: 6000}\n"
    )
    judge, adapter, server = load_plugin_config(path)
    assert judge.sampling.samples == 2
    assert (adapter.reward_scale, adapter.fallback_reward) == ("raw", 0.5)
    assert server == {"port": 6000}
    with pytest.raises(ValueError, match="unknown config sections"):
        load_plugin_config({"judge": {}, "trl": {}})


def test_serve_defaults_to_loopback_without_token(monkeypatch):
    monkeypatch.delenv("GRM_PLUGIN_TOKEN", raising=False)
    args = build_parser().parse_args(["serve"])
    settings = build_settings(args, {}, OpenRLHFSettings())
    assert (settings.host, settings.port, settings.token) == ("127.0.0.1", 5000, None)


def test_serve_flags_override_config_sections(monkeypatch):
    monkeypatch.setenv("GRM_PLUGIN_TOKEN", "from-env")
    args = build_parser().parse_args(
        ["serve", "--port", "7000", "--deadline", "30", "--strip", "<eos>", "--reward-scale", "raw"]
    )
    adapter = OpenRLHFSettings(strip_tokens=["</s>"], fallback_reward=0.1)
    settings = build_settings(args, {"host": "10.0.0.1", "port": 6000}, adapter)
    assert (settings.host, settings.port, settings.token) == ("10.0.0.1", 7000, "from-env")
    o = settings.openrlhf
    assert (o.deadline, o.reward_scale, o.fallback_reward) == (30.0, "raw", 0.1)
    assert o.strip_tokens == ["</s>", "<eos>"]
