"""The reward server (core) with the OpenRLHF protocol, without OpenRLHF installed (default suite).

The same protocol is exercised with OpenRLHF's own client in tests/adapters/openrlhf.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters import openrlhf as adapter_mod
from grm_plugin.adapters.openrlhf import (
    LOG_KEYS,
    OpenRLHFProtocol,
    OpenRLHFReward,
    OpenRLHFSettings,
    ResponseExtractor,
    load_plugin_config,
)
from grm_plugin.cli.main import build_parser
from grm_plugin.cli.serve import build_settings, protocol_overrides
from grm_plugin.deadline import Expiry
from grm_plugin.engines import GenerationRequest, JudgeEngine
from grm_plugin.grouping import GroupBatcher, Judged, RewardItem
from grm_plugin.policy import RewardPolicy
from grm_plugin.results import FailureKind, JudgmentResult
from grm_plugin.server import ServerSettings, create_app, load_protocol
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


def app_for(
    engine: JudgeEngine, policy: dict | None = None, group_window: float = 0.0, **server: object
):
    protocol = OpenRLHFProtocol(OpenRLHFSettings(policy=RewardPolicy(**(policy or {}))))
    settings = ServerSettings(group_window=group_window, **server)
    return create_app(GenerativeRewardFn(engine), protocol, settings)


def client(engine: JudgeEngine, policy: dict | None = None, **server: object) -> TestClient:
    return TestClient(app_for(engine, policy, **server))


async def post_concurrently(app, bodies: list[dict]) -> list[dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        rs = await asyncio.gather(*(c.post("/get_reward", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in rs)
    return [r.json() for r in rs]


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


def unit(response: str) -> float:
    return (length_score(response) - 1) / 9


# --------------------------------------------------------------------------------- structure


def test_the_core_server_and_cli_import_no_adapter():
    """The core depends on no adapter: the protocol is imported by name when serving."""
    code = (
        "import sys, grm_plugin.server, grm_plugin.grouping, grm_plugin.cli.serve, "
        "grm_plugin.cli.main\n"
        "print(sorted(m for m in sys.modules if m.startswith('grm_plugin.adapters')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert load_protocol("openrlhf") is OpenRLHFProtocol
    with pytest.raises(ValueError, match="unknown protocol"):
        load_protocol("nope")


# --------------------------------------------------------------------------------- rewards/flags


@pytest.mark.parametrize(("scale", "expected"), [("unit", 5 / 9), ("raw", 6.0)])
def test_reward_is_the_scaled_judge_score(scale, expected):
    engine = RuleJudgeEngine()
    r = client(engine, {"scale": scale}).post("/get_reward", json=body("Paris"))
    assert r.status_code == 200
    out = r.json()
    assert out["rewards"] == out["scores"] == [pytest.approx(expected)]
    assert set(out["extra_logs"]) == set(LOG_KEYS)
    assert out["extra_logs"]["grm_failed"] == [0.0]
    assert out["extra_logs"]["grm_raw"] == [6.0]
    assert out["extra_logs"]["grm_group_size"] == [1.0]
    assert [shown_responses(q) for q in engine.requests] == [["Paris"]]


def test_root_path_answers_like_get_reward():
    r = client(RuleJudgeEngine()).post("/", json=body("Lyon"))
    assert r.json()["rewards"] == [pytest.approx(unit("Lyon"))]


def test_judge_failure_is_fallback_and_flag_with_http_200():
    policy = {"on_failure": "fallback", "fallback": -1.0}
    r = client(FailingEngine(), policy).post("/get_reward", json=body("Paris"))
    assert r.status_code == 200
    out = r.json()
    assert out["rewards"] == out["scores"] == [-1.0]
    logs = out["extra_logs"]
    assert logs["grm_failed"] == logs["grm_failed_engine"] == [1.0]
    assert logs["grm_failed_timeout"] == logs["grm_abstained"] == [0.0]


def test_abstaining_on_failure_gives_the_scales_middle_alone_and_flags_it():
    out = client(FailingEngine()).post("/get_reward", json=body("Paris")).json()
    assert out["rewards"] == [0.5]  # the policy's default: a failure says nothing
    assert out["extra_logs"]["grm_abstained"] == out["extra_logs"]["grm_failed"] == [1.0]


def test_several_queries_in_one_request_keep_their_order():
    engine = RuleJudgeEngine()
    req = {"query": [PROMPT + "ab", PROMPT + "", PROMPT + "abcdef"], "prompts": [PROMPT] * 3}
    out = client(engine).post("/get_reward", json=req).json()
    # an empty response is not judged: the lowest reward of the scale, flagged as empty
    assert out["rewards"] == pytest.approx([2 / 9, 0.0, 6 / 9])
    assert out["extra_logs"]["grm_failed"] == [0.0, 0.0, 0.0]
    assert out["extra_logs"]["grm_empty"] == [0.0, 1.0, 0.0]


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
        policy = {"on_failure": "fallback", "fallback": 0.0}
        return (await post_concurrently(app_for(engine, policy, deadline=0.2), [body("x")]))[0]

    out = asyncio.run(run())
    assert out["rewards"] == [0.0]
    assert out["extra_logs"]["grm_failed_timeout"] == [1.0]
    assert out["extra_logs"]["grm_failed"] == [1.0]


def test_concurrency_limit_queues_judgments():
    engine = BlockingEngine()

    async def run() -> list[dict]:
        engine.release = asyncio.Event()
        app = app_for(engine, max_concurrent=1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            # two prompts: never one group
            bodies = [body("a", prompt="p1"), body("b", prompt="p2")]
            posts = [asyncio.ensure_future(c.post("/get_reward", json=b)) for b in bodies]
            while (await c.get("/health")).json()["in_flight"] < 2 or engine.active < 1:
                await asyncio.sleep(0.01)
            assert engine.active == 1  # the second judgment waits for the slot
            engine.release.set()
            return [(await p).json() for p in posts]

    outs = asyncio.run(run())
    assert [o["rewards"] for o in outs] == [[pytest.approx(1 / 9)]] * 2
    assert engine.max_active == 1


# --------------------------------------------------------------------------------- grouping


class RecordingJudge(RuleJudgeEngine):
    """A rule judge that records which responses each judgment saw together."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.seen.append(shown_responses(request))
        return await super().generate(request)


def test_concurrent_samples_of_one_prompt_are_judged_together():
    judge = RecordingJudge()
    app = app_for(judge, group_window=5.0, group_size=4)
    answers = ["Paris", "Lyon", "Nice!", "Marseille"]
    outs = asyncio.run(post_concurrently(app, [body(a) for a in answers]))
    # the group filled up (group_size) long before the 5 s window: one judgment of all four
    assert [sorted(s) for s in judge.seen] == [sorted(answers)]
    assert [o["rewards"][0] for o in outs] == pytest.approx([unit(a) for a in answers])
    assert [o["extra_logs"]["grm_group_size"] for o in outs] == [[4.0]] * 4


def test_prompts_and_labels_are_never_mixed_and_identical_responses_are_shown_once():
    judge = RecordingJudge()
    app = app_for(judge, group_window=0.3, group_size=8)
    bodies = [
        body("Paris"),
        body("Paris"),  # the same response twice: shown once, same reward
        body("Lyon"),
        body("Rome", prompt="<|im_start|>user\nCapital of Italy?<|im_end|>\n"),
        body("Paris", label="Paris"),  # another label: another reference, another group
    ]
    outs = asyncio.run(post_concurrently(app, bodies))
    assert sorted(sorted(s) for s in judge.seen) == [["Lyon", "Paris"], ["Paris"], ["Rome"]]
    assert outs[0]["rewards"] == outs[1]["rewards"] == [pytest.approx(unit("Paris"))]
    assert [o["extra_logs"]["grm_group_size"][0] for o in outs] == [2.0, 2.0, 2.0, 1.0, 1.0]


def test_a_lone_sample_is_judged_pointwise_when_the_window_closes():
    judge = RecordingJudge()
    app = app_for(judge, group_window=0.05, group_size=8)
    out = asyncio.run(post_concurrently(app, [body("Paris")]))[0]
    assert judge.seen == [["Paris"]]
    assert out["rewards"] == [pytest.approx(unit("Paris"))]


def test_groups_larger_than_group_size_are_judged_in_chunks():
    judge = RecordingJudge()
    app = app_for(judge, group_window=5.0, group_size=3)
    answers = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    asyncio.run(post_concurrently(app, [body(a) for a in answers]))
    assert sorted(len(s) for s in judge.seen) == [3, 3]
    assert sorted(r for s in judge.seen for r in s) == answers


def test_a_failed_sample_in_a_group_gets_the_mean_of_the_others():
    # a judgment that scored two of three responses (e.g. k samples that disagree on validity)
    result = JudgmentResult(scores=[10.0, None, 4.0], score_sums=[10.0, None, 4.0], num_valid=1)
    protocol = OpenRLHFProtocol()
    _, state = protocol.decode({"query": ["x"], "prompts": ["p"]})
    out = protocol.encode(state, [Judged(result, 1, (0, 1, 2), 1)])
    # abstained: the mean of the group's other rewards, so GRPO gives it zero advantage
    assert out["rewards"] == [pytest.approx((1.0 + 1 / 3) / 2)]
    assert out["extra_logs"]["grm_abstained"] == out["extra_logs"]["grm_failed"] == [1.0]
    lone = JudgmentResult(scores=[None], score_sums=[None], failed=True)
    alone = protocol.encode(state, [Judged(lone, 0, (0,), 0)])
    assert alone["rewards"] == [0.5]  # nothing to take the mean of: the scale's middle


def test_batcher_answers_each_item_by_its_own_deadline():
    engine = BlockingEngine()

    async def run():
        engine.release = asyncio.Event()
        batcher = GroupBatcher(GenerativeRewardFn(engine), window=0.01, max_size=2)
        item = RewardItem("q", "a", group="g")
        return await batcher.judge(item, expiry=Expiry.after(0.1))

    judged = asyncio.run(run())
    assert judged.result.failed and judged.result.failure_kind is FailureKind.TIMEOUT


# ------------------------------------------------------------------------------- auth and 4xx


def test_bearer_basic_or_url_token_required():
    import base64

    c = client(RuleJudgeEngine(), token="s3cret")
    assert c.post("/get_reward", json=body("x")).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert c.post("/get_reward", json=body("x"), headers=bad).status_code == 401
    assert c.post("/get_reward?token=wrong", json=body("x")).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert c.post("/get_reward", json=body("x"), headers=good).status_code == 200
    assert c.post("/get_reward?token=s3cret", json=body("x")).status_code == 200
    # what a URL http://grm:s3cret@host/ becomes in aiohttp (OpenRLHF's client)
    basic = {"Authorization": "Basic " + base64.b64encode(b"grm:s3cret").decode()}
    assert c.post("/get_reward", json=body("x"), headers=basic).status_code == 200
    wrong_basic = {"Authorization": "Basic " + base64.b64encode(b"s3cret:nope").decode()}
    assert c.post("/get_reward", json=body("x"), headers=wrong_basic).status_code == 401
    assert (
        c.post("/get_reward", json=body("x"), headers={"Authorization": "Basic %%"}).status_code
        == 401
    )
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


def test_extractor_cuts_long_responses_before_reading_them():
    ex = ResponseExtractor(["<|im_end|>"], limit=2000)
    text, found, cut = ex.cut(PROMPT + "w" * 10_000 + "<|im_end|>", PROMPT)
    assert (len(text), found, cut) == (2000, True, True)
    assert ex.cut(PROMPT + "w" * 1000, PROMPT)[2] is False


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


# ------------------------------------------------------------------------- sync API and config


def test_sync_reward_from_many_threads_shares_one_loop():
    engine = RuleJudgeEngine()
    adapter = OpenRLHFReward(GenerativeRewardFn(engine))
    answers = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda a: adapter.reward([PROMPT + a], [PROMPT], [""]), answers))
    assert [o["rewards"][0] for o in outs] == pytest.approx([len(a) / 9 for a in answers])


def test_sync_reward_groups_concurrent_threads_of_one_prompt():
    """The .py target: OpenRLHF calls reward_func from one thread per sample; samples of a
    prompt that arrive within the window are judged together."""
    judge = RecordingJudge()
    server = ServerSettings(group_window=5.0, group_size=4)
    adapter = OpenRLHFReward(GenerativeRewardFn(judge), server=server)
    answers = ["a", "bb", "ccc", "dddd"]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda a: adapter.reward([PROMPT + a], [PROMPT], [""]), answers))
    assert [sorted(s) for s in judge.seen] == [answers]
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
        "openrlhf: {policy: {scale: raw, on_failure: fallback, fallback: 0.5}}\n"
        "server: {port: 6000, group_window: 0.2}\n"
    )
    judge, adapter, server = load_plugin_config(path)
    assert judge.sampling.samples == 2
    assert (adapter.policy.scale, adapter.policy.fallback) == ("raw", 0.5)
    assert server == {"port": 6000, "group_window": 0.2}
    with pytest.raises(ValueError, match="unknown config sections"):
        load_plugin_config({"judge": {}, "trl": {}})


def test_serve_defaults_to_loopback_without_token(monkeypatch):
    monkeypatch.delenv("GRM_PLUGIN_TOKEN", raising=False)
    args = build_parser().parse_args(["serve"])
    settings = build_settings(args, {})
    assert (settings.host, settings.port, settings.token) == ("127.0.0.1", 5000, None)
    assert (settings.group_window, settings.group_size) == (0.5, 8)


def test_serve_flags_override_config_sections(monkeypatch):
    monkeypatch.setenv("GRM_PLUGIN_TOKEN", "from-env")
    args = build_parser().parse_args(
        ["serve", "--port", "7000", "--deadline", "30", "--strip", "<eos>", "--reward-scale",
         "raw", "--group-window", "2", "--group-size", "16"]
    )  # fmt: skip
    settings = build_settings(args, {"host": "10.0.0.1", "port": 6000})
    assert (settings.host, settings.port, settings.token) == ("10.0.0.1", 7000, "from-env")
    assert (settings.deadline, settings.group_window, settings.group_size) == (30.0, 2.0, 16)
    section = {"strip_tokens": ["</s>"], "policy": {"fallback": 0.1, "on_failure": "fallback"}}
    o = OpenRLHFProtocol.from_section(section, protocol_overrides(args)).settings
    assert (o.policy.scale, o.policy.fallback, o.policy.on_failure) == ("raw", 0.1, "fallback")
    assert o.strip_tokens == ["</s>", "<eos>"]


# ------------------------------------------------------------------------- README and example

ROOT = Path(__file__).resolve().parents[1]


def openrlhf_docs() -> list[tuple[str, str]]:
    """The README's OpenRLHF section and the OpenRLHF launch script."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### OpenRLHF")
    end = readme.index("\n### ", start + 1)
    script = (ROOT / "examples" / "openrlhf_remote_rm.sh").read_text()
    return [("README.md", readme[start:end]), ("openrlhf_remote_rm.sh", script)]


def serve_commands(text: str) -> list[list[str]]:
    """argv (after ``grm-plugin``) of every ``grm-plugin serve`` command, $VARS filled in."""
    if "```" in text:  # markdown: the shell blocks only, not the prose
        text = "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S))
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if line.strip().startswith("grm-plugin serve"):  # a command, not a comment
            cmd = re.sub(r"\$\{?(\w+)\}?", r"1", line.strip().split(" &")[0])
            found.append(shlex.split(cmd, comments=True)[1:])
    return found


def test_readme_and_example_serve_commands_give_valid_settings(monkeypatch):
    monkeypatch.delenv("GRM_PLUGIN_TOKEN", raising=False)
    commands = [c for _, text in openrlhf_docs() for c in serve_commands(text)]
    assert len(commands) >= 2
    for argv in commands:
        args = build_parser().parse_args(argv)
        settings = build_settings(args, {})
        OpenRLHFProtocol.from_section({}, protocol_overrides(args))  # validates the policy
        assert settings.group_size == 8  # what the docs tell users to set


def test_every_serve_flag_in_the_openrlhf_docs_exists():
    """Every grm-plugin flag named in the OpenRLHF section is one of `grm-plugin serve --help`
    (OpenRLHF's own dotted flags are checked against its parser in the nox session)."""
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["serve"]
    options = {o for a in sub._actions for o in a.option_strings}
    help_text = sub.format_help()
    # the prose and commands of the README section (the launch script also runs vllm, whose
    # flags are not ours: its grm-plugin commands are parsed by the test above)
    section = openrlhf_docs()[0][1]
    named = set(re.findall(r"(?<![\w.-])--[a-z][a-z-]+(?![\w.])", section))
    assert {"--group-size", "--group-window", "--fallback-reward", "--token"} <= named
    for flag in named:
        assert flag in options and flag in help_text, flag


def test_readme_openrlhf_config_block_loads():
    section = openrlhf_docs()[0][1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block
    data = yaml.safe_load(textwrap.dedent(block.group(1)))
    judge, adapter, server = load_plugin_config(data)
    assert adapter.policy.on_failure == "abstain"
    settings = ServerSettings.model_validate(server)
    assert (settings.group_window, settings.group_size, settings.deadline) == (0.5, 8, 150.0)


def test_readme_lists_every_extra_logs_key():
    section = openrlhf_docs()[0][1]
    table_row = next(line for line in section.splitlines() if line.startswith("| `extra_logs`"))
    assert set(re.findall(r"`(grm_\w+)`", table_row)) == set(LOG_KEYS)
