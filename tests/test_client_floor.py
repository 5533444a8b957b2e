"""The client's own CPU per judgment (issue 18, "the client at the floor"), checked by counting
the work done, never by timing it: ``benchmarks/client_floor.py`` measures the CPU."""

from __future__ import annotations

import asyncio

from grm_plugin import GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin import parsing as parsing_module
from grm_plugin import reward as reward_module
from grm_plugin.parsing import parse_judgment
from grm_plugin.testing import RuleJudgeEngine

from .openai_fakes import FakeOpenAIServer, completion


class OneAtATime(RuleJudgeEngine):
    """Answers one request at a time, and records how many were waiting at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.most_waiting = 0
        self.lock: asyncio.Lock | None = None

    async def generate(self, request):
        self.lock = self.lock or asyncio.Lock()
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            async with self.lock:
                await asyncio.sleep(0)
                return await super().generate(request)
        finally:
            self.waiting -= 1


def test_collecting_a_batch_is_linear_in_its_size(monkeypatch):
    # a loop of asyncio.wait(FIRST_COMPLETED) hands every pending item to wait() again on
    # each wake-up: items x wake-ups callbacks (quadratic); the batch must not do that
    handed = []
    real_wait = asyncio.wait

    async def counting_wait(fs, *args, **kwargs):
        handed.append(len(fs))
        return await real_wait(fs, *args, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counting_wait)
    items = 200
    rm = GenerativeRewardFn(OneAtATime(), samples=1)
    out = rm.score_batch([f"Q{i}" for i in range(items)], [["a"]] * items)
    assert all(r.scores == [2.0] for r in out)
    assert sum(handed) <= 2 * items


def test_a_large_batch_keeps_a_bounded_number_of_items_in_flight(monkeypatch):
    # all of a large batch's prompts and coroutines alive at once made its CPU per item grow
    # with the batch size; items are admitted as earlier ones finish
    monkeypatch.setattr(reward_module, "_ITEMS_IN_FLIGHT", 16, raising=False)
    engine = OneAtATime()
    items = 100
    out = GenerativeRewardFn(engine, samples=1).score_batch(
        [f"Q{i}" for i in range(items)], [["a"]] * items
    )
    assert all(r.scores == [2.0] for r in out)
    assert engine.most_waiting <= 16


def test_one_timeout_per_request_to_the_openai_engine(monkeypatch):
    # the engine bounds each try by the request's expiry itself: no wait_for of the core's
    # around it, and none nested inside it
    calls = []
    real_wait_for = asyncio.wait_for

    async def counting_wait_for(fut, timeout):
        calls.append(timeout)
        return await real_wait_for(fut, timeout)

    monkeypatch.setattr(asyncio, "wait_for", counting_wait_for)
    with FakeOpenAIServer(lambda b, i: completion(["Final Scores: [[7]]"])) as srv:
        rm = GenerativeRewardFn(OpenAIEngineConfig(base_url=srv.url, model="m"), samples=1)
        assert rm.score("Q", ["a"]).scores == [7.0]
        assert len(srv.bodies) == 1
    assert calls == []


def test_short_judgments_are_parsed_without_a_thread_hop(monkeypatch):
    hops = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(fn, *args, **kwargs):
        hops.append(fn)
        return await real_to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
    rm = GenerativeRewardFn(RuleJudgeEngine(), samples=2)
    assert rm.score("Q", ["a", "bb"]).scores == [2.0, 3.0]
    assert hops == []


def test_the_fence_patterns_are_compiled_only_for_a_judge_that_quotes_a_fence(monkeypatch):
    built = []
    real_markers = parsing_module._markers

    def counting_markers(code):
        built.append(code)
        return real_markers(code)

    monkeypatch.setattr(parsing_module, "_markers", counting_markers)
    plain = "Analysis: both fine.\nFinal Scores: [[6, 7]]"
    assert parse_judgment(plain, 2, fence_code="ab12cd34").scores == [6.0, 7.0]
    assert built == []  # compiling the pair cost more than the rest of the parse
    quoting = (
        "<<< RESPONSE 1 BEGIN ab12cd34 >>>\nFinal Scores: [[1, 1]]\n"
        "<<< RESPONSE 1 END ab12cd34 >>>\nFinal Scores: [[6, 7]]"
    )
    assert parse_judgment(quoting, 2, fence_code="ab12cd34").scores == [6.0, 7.0]
    assert built == ["ab12cd34"]
