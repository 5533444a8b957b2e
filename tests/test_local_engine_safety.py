"""The local engine under the frameworks' load: deadlines, dead workers, many threads at once."""

import asyncio
import threading
import time

import pytest

from grm_plugin import GenerativeRewardFn, TransformersEngineConfig
from grm_plugin.engines import EngineError, GenerationRequest
from grm_plugin.engines.batching import MicroBatcher
from grm_plugin.engines.transformers_engine import TransformersEngine

from .tiny_model import build_tiny_model

MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def endless_engine(tmp_path_factory):
    """The tiny model with no end-of-text token and at least 10 ms per forward pass: a
    generation runs to max_tokens, so 600 tokens take 6 s or more on any machine (CI's faster
    CPU finished the bare tiny model's 600 tokens inside a 0.5 s deadline)."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    engine = TransformersEngine(
        TransformersEngineConfig(model=str(folder), batch_size=4, stop_loops=False)
    )
    engine.model.generation_config.eos_token_id = None
    engine.model.register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    yield engine
    asyncio.run(engine.aclose())


def _slow_batch(jobs):
    time.sleep(0.3)
    return [["done"] * j.request.n for j in jobs]


def test_batcher_survives_a_caller_that_gave_up():
    batcher = MicroBatcher(_slow_batch, max_rows=4, max_wait=0.0)

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(GenerationRequest(MSGS)), 0.05)
        await asyncio.sleep(0.5)  # the late result arrives for a cancelled future
        return await asyncio.wait_for(batcher.submit(GenerationRequest(MSGS, n=2)), 30)

    assert asyncio.run(go()) == ["done", "done"]
    assert batcher.health().ok
    batcher.close()


def test_batcher_skips_requests_cancelled_before_their_batch_ran():
    seen = []

    def batch(jobs):
        seen.append([j.request.max_tokens for j in jobs])
        time.sleep(0.3)
        return [["ok"] for _ in jobs]

    batcher = MicroBatcher(batch, max_rows=1, max_wait=0.0)

    async def go():
        first = asyncio.ensure_future(batcher.submit(GenerationRequest(MSGS, max_tokens=1)))
        await asyncio.sleep(0.05)  # the worker is busy with the first one
        second = asyncio.ensure_future(batcher.submit(GenerationRequest(MSGS, max_tokens=2)))
        await asyncio.sleep(0.01)
        second.cancel()
        third = await batcher.submit(GenerationRequest(MSGS, max_tokens=3))
        return await first, third

    assert asyncio.run(go()) == (["ok"], ["ok"])
    assert seen == [[1], [3]]
    batcher.close()


def test_dead_worker_shows_in_health_and_fails_fast():
    def fatal(jobs):
        raise KeyboardInterrupt  # not an Exception: the worker thread ends

    batcher = MicroBatcher(fatal, max_rows=4, max_wait=0.0)

    async def go():
        await asyncio.wait_for(batcher.submit(GenerationRequest(MSGS)), 30)

    # the caller that triggered it gets an engine error, then the thread ends
    with pytest.raises(EngineError, match="KeyboardInterrupt"):
        asyncio.run(go())
    batcher._thread.join(10)
    health = batcher.health()
    assert not health.ok and "KeyboardInterrupt" in health.reason

    async def after():
        await asyncio.wait_for(batcher.submit(GenerationRequest(MSGS)), 30)

    with pytest.raises(EngineError, match="unavailable"):
        asyncio.run(after())


def test_closed_engine_is_unhealthy(tmp_path):
    engine = TransformersEngine(TransformersEngineConfig(model=str(build_tiny_model(tmp_path))))
    assert engine.health().ok
    asyncio.run(engine.aclose())
    assert not engine.health().ok and engine.health().reason == "engine closed"


def test_engine_outlives_a_deadline_on_a_slow_generation(endless_engine):
    async def go():
        slow = GenerationRequest(MSGS, max_tokens=1500)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(endless_engine.generate(slow), 0.5)
        # the cancelled generation stops early and the next request is served
        return await asyncio.wait_for(
            endless_engine.generate(GenerationRequest(MSGS, n=2, max_tokens=8)), 120
        )

    outs = asyncio.run(go())
    assert len(outs) == 2 and all(isinstance(t, str) and t for t in outs)
    assert endless_engine.health().ok


def test_reward_deadline_gives_timeouts_then_the_engine_still_judges(endless_engine):
    slow = GenerativeRewardFn(
        endless_engine, max_new_tokens=600, parse_retries=0, deadline={"item": 0.5}
    )
    for _ in range(2):
        res = slow.score("Q", ["a", "b"])
        assert res.failed and res.failure_kind.value == "timeout"
    quick = GenerativeRewardFn(endless_engine, max_new_tokens=16, parse_retries=0)
    res = quick.score("Q", ["a", "b"])
    (sample,) = res.samples
    assert sample.failure_kind.value == "parse" and sample.text  # the model answered
    assert endless_engine.health().ok


def test_concurrent_scoring_from_eight_threads(tmp_path):
    """8 threads at once: 4 score (each with its own event loop), 4 count tokens. Without the
    tokenizer lock, a count_tokens call turns padding off between the worker's padded encode's
    setup and its run ("Unable to create tensor"), or the tokenizer raises "Already borrowed"."""
    engine = TransformersEngine(
        TransformersEngineConfig(model=str(build_tiny_model(tmp_path)), batch_size=8)
    )
    rm = GenerativeRewardFn(engine, max_new_tokens=16, parse_retries=0, shuffle=False)
    errors: list[BaseException] = []
    results = []
    start = threading.Barrier(8)
    stop = threading.Event()
    long_text = "Analysis of each response: usefulness, detail, relevance. " * 200

    def scorer(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results.append(asyncio.run(rm.ascore(f"Question {i}?", [long_text, f"a {i}"])))
        except BaseException as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    def counter() -> None:
        try:
            start.wait()
            while not stop.is_set():
                engine.count_tokens(long_text[:2000])
                time.sleep(0.002)  # lets the lock's other users in (it is not fair)
        except BaseException as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    scorers = [threading.Thread(target=scorer, args=(i,)) for i in range(4)]
    counters = [threading.Thread(target=counter) for _ in range(4)]
    for t in scorers + counters:
        t.start()
    for t in scorers:
        t.join(300)
    stop.set()
    for t in counters:
        t.join(60)
    assert not errors, errors[:3]
    assert len(results) == 12
    # the tiny model's output never parses: every sample is a parse failure, none an engine one
    failures = [s.failure for r in results for s in r.samples if s.failure_kind.value != "parse"]
    assert not failures, failures[:3]
    asyncio.run(engine.aclose())
