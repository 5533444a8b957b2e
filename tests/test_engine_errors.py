"""The engine exception tree: each engine maps its library's failures once, at its boundary,
and the core reads the failure kind from the exception's class."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.responses import JSONResponse

from grm_plugin import Deadline, GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.engines.errors import (
    EngineBadResponse,
    EngineConnectionError,
    EngineError,
    EnginePromptTooLong,
    EngineRateLimited,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    PromptTooLongError,
    failure_kind,
    map_exceptions,
)
from grm_plugin.engines.openai_engine import OpenAIEngine
from grm_plugin.results import FailureKind
from grm_plugin.reward import failure_of, run_sync
from grm_plugin.testing.engines import FailingEngine

from .openai_fakes import FakeOpenAIServer, completion, free_port

MSGS = [{"role": "user", "content": "judge this"}]


def _gen(url: str, **kw) -> list[str]:
    eng = OpenAIEngine(OpenAIEngineConfig(base_url=url, model="m", max_retries=1, **kw))
    return run_sync(eng.generate(GenerationRequest(MSGS, request_timeout=5.0)))


def test_a_judge_slower_than_the_request_deadline_is_a_timeout():
    # slower than deadline.request on every try: the item failed by timeout, not by the engine
    with FakeOpenAIServer(lambda b, i: 30.0) as srv:
        rm = GenerativeRewardFn(
            OpenAIEngineConfig(base_url=srv.url, model="m", max_retries=1),
            samples=2,
            deadline=Deadline(request=0.3, item=10),
        )
        res = rm.score("Q", ["a", "b"])
    assert res.failed and res.failure_kind is FailureKind.TIMEOUT
    assert all(s.failure_kind is FailureKind.TIMEOUT for s in res.samples)
    assert "engine: TimeoutError" not in (res.error or "")
    assert all(s.failure.startswith("timeout: EngineTimeout") for s in res.samples)


def test_item_deadline_guard_is_a_timeout_not_an_engine_failure():
    class Hangs(FailingEngine):
        async def generate(self, request):  # ignores the expiry it is given
            await asyncio.sleep(30)

    res = GenerativeRewardFn(Hangs(), samples=1, deadline=Deadline(item=0.3)).score("Q", ["a"])
    assert res.failure_kind is FailureKind.TIMEOUT
    assert "engine:" not in (res.error or "")


@pytest.mark.parametrize(
    "behaviour, cls",
    [
        (lambda b, i: JSONResponse({"error": "boom"}, status_code=500), EngineServerError),
        (lambda b, i: JSONResponse({"error": "later"}, status_code=429), EngineRateLimited),
        (lambda b, i: JSONResponse({"error": "no such model"}, status_code=404), EngineRejected),
        (lambda b, i: {"id": "x", "object": "chat.completion"}, EngineBadResponse),
        (lambda b, i: completion([{"not": "text"}]), EngineBadResponse),  # type: ignore[list-item]
    ],
)
def test_openai_engine_raises_the_class_of_its_failure(behaviour, cls):
    with FakeOpenAIServer(behaviour) as srv:
        with pytest.raises(cls):
            _gen(srv.url)


def test_server_down_is_a_connection_error():
    with pytest.raises(EngineConnectionError, match="after 2 tries"):
        _gen(f"http://127.0.0.1:{free_port()}/v1")


def test_a_prompt_too_long_for_the_servers_context_is_bad_input():
    # vLLM's answer to a prompt longer than max_model_len: the caller's input, not the engine
    msg = "This model's maximum context length is 2048 tokens. However, you requested 9000 tokens"
    refuse = JSONResponse({"error": {"message": msg}}, status_code=400)
    with FakeOpenAIServer(lambda b, i: refuse) as srv:
        with pytest.raises(EnginePromptTooLong) as info:
            _gen(srv.url)
        assert len(srv.bodies) == 1  # not retried
    assert failure_of(info.value)[0] is FailureKind.BAD_INPUT


@pytest.mark.parametrize(
    "error, kind",
    [
        (EngineTimeout("x"), FailureKind.TIMEOUT),
        (TimeoutError("x"), FailureKind.TIMEOUT),
        (EngineServerError("x"), FailureKind.ENGINE),
        (EngineRateLimited("x", retry_after=1.0), FailureKind.ENGINE),
        (EngineBadResponse("x"), FailureKind.ENGINE),
        (EnginePromptTooLong("x"), FailureKind.BAD_INPUT),
        (PromptTooLongError("x"), FailureKind.BAD_INPUT),
        (RuntimeError("x"), FailureKind.ENGINE),
    ],
)
def test_failure_kind_is_read_from_the_class(error, kind):
    assert failure_kind(error) is kind
    assert failure_of(error)[0] is kind


def test_engine_timeout_is_a_timeout_error_and_an_engine_error():
    assert issubclass(EngineTimeout, TimeoutError) and issubclass(EngineTimeout, EngineError)


def test_map_exceptions_maps_in_order_and_passes_the_rest():
    mapping = {TimeoutError: EngineTimeout, OSError: EngineConnectionError}
    with pytest.raises(EngineTimeout, match="u: TimeoutError: slow") as info:
        with map_exceptions(mapping, "u"):
            raise TimeoutError("slow")
    assert isinstance(info.value.__cause__, TimeoutError)
    with pytest.raises(EngineConnectionError):
        with map_exceptions(mapping):
            raise ConnectionRefusedError("no")
    with pytest.raises(KeyError):  # not mapped: a bug, not an engine failure
        with map_exceptions(mapping):
            raise KeyError("k")
    with pytest.raises(EngineServerError):  # already an engine error: unchanged
        with map_exceptions(mapping):
            raise EngineServerError("HTTP 500")


def test_a_local_batch_failure_reaches_callers_as_an_engine_error():
    from grm_plugin.engines.batching import MicroBatcher

    def oom(jobs):
        raise MemoryError("CUDA out of memory")

    def slow(jobs):
        raise TimeoutError("generation stopped at the deadline")

    for fn, cls, kind in ((oom, EngineError, FailureKind.ENGINE), (slow, EngineTimeout, None)):
        batcher = MicroBatcher(fn, max_rows=1, max_wait=0.0)
        try:
            with pytest.raises(cls, match="local engine") as info:
                asyncio.run(batcher.submit(GenerationRequest(MSGS)))
        finally:
            batcher.close()
        assert failure_kind(info.value) is (kind or FailureKind.TIMEOUT)
