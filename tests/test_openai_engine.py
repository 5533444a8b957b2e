import time

import pytest
from fastapi.responses import JSONResponse

from grm_plugin import Deadline, GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.deadline import Expiry
from grm_plugin.engines import EngineError, GenerationRequest
from grm_plugin.engines.openai_engine import OpenAIEngine
from grm_plugin.reward import run_sync

from .openai_fakes import FakeOpenAIServer, completion, free_port

MSGS = [{"role": "user", "content": "judge this"}]


def engine(url, **kw) -> OpenAIEngine:
    return OpenAIEngine(OpenAIEngineConfig(base_url=url, **kw))


def gen(eng, n=1, **kw):
    return run_sync(eng.generate(GenerationRequest(MSGS, n=n, temperature=0.5, **kw)))


def test_native_n_in_one_request_and_model_from_listing():
    with FakeOpenAIServer(lambda b, i: completion([f"t{j}" for j in range(b["n"])])) as srv:
        eng = engine(srv.url)
        assert gen(eng, n=4) == ["t0", "t1", "t2", "t3"]
        assert len(srv.bodies) == 1 and srv.bodies[0]["n"] == 4
        assert srv.bodies[0]["model"] == "fake-judge"
        assert eng._native_n is True


def test_server_ignoring_n_falls_back_to_parallel_requests():
    with FakeOpenAIServer(lambda b, i: completion([f"c{i}"])) as srv:
        eng = engine(srv.url, model="m")
        out = gen(eng, n=3)
        assert len(out) == 3 and out[0] == "c1"
        assert eng._native_n is False
        gen(eng, n=2)
        assert [b["n"] for b in srv.bodies] == [3, 1, 1, 1, 1]


def test_retries_5xx_and_429_honouring_retry_after():
    def flaky(body, i):
        if i == 1:
            return JSONResponse({"error": "boom"}, status_code=500)
        if i == 2:
            return JSONResponse(
                {"error": "slow down"}, status_code=429, headers={"Retry-After": "0.2"}
            )
        return completion(["ok"])

    with FakeOpenAIServer(flaky) as srv:
        t = time.monotonic()
        assert gen(engine(srv.url, model="m", max_retries=3)) == ["ok"]
        assert len(srv.bodies) == 3 and time.monotonic() - t >= 0.2


def test_4xx_is_not_retried():
    with FakeOpenAIServer(lambda b, i: JSONResponse({"error": "bad"}, status_code=400)) as srv:
        with pytest.raises(EngineError, match="HTTP 400"):
            gen(engine(srv.url, model="m"))
        assert len(srv.bodies) == 1


def test_timeout_then_engine_error_within_deadline():
    with FakeOpenAIServer(lambda b, i: 5.0) as srv:
        t = time.monotonic()
        with pytest.raises(EngineError, match="tries"):
            gen(
                engine(srv.url, model="m", max_retries=1),
                request_timeout=0.3,
                expiry=Expiry.after(2.0),
            )
        assert time.monotonic() - t < 4.5


def test_server_down_gives_flagged_none():
    url = f"http://127.0.0.1:{free_port()}/v1"
    rm = GenerativeRewardFn(
        OpenAIEngineConfig(base_url=url, model="m", max_retries=1),
        samples=2,
        deadline=Deadline(item=3),
    )
    res = rm.score("Q", ["a", "b"])
    assert res.failed and res.scores == [None, None]
    assert "EngineConnectionError" in res.error


def test_replicas_share_load():
    with FakeOpenAIServer(lambda b, i: 0.2) as a, FakeOpenAIServer(lambda b, i: 0.2) as b:
        rm = GenerativeRewardFn(OpenAIEngineConfig(base_url=[a.url, b.url], model="m"))
        # distinct prompts: identical items would share one judgment (grm_plugin.cache)
        out = rm.score_batch([f"Q{i}" for i in range(8)], [["x"]] * 8)
        assert all(r.scores == [5.0] for r in out)
        assert len(a.bodies) >= 2 and len(b.bodies) >= 2


def test_retry_after_forms_the_sdk_honoured():
    from email.utils import formatdate

    from grm_plugin.engines.openai_engine import _retry_after

    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_a_minute = _retry_after({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert in_a_minute is not None and 50 < in_a_minute <= 60
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after({}) is None


def test_the_api_key_is_sent_as_a_bearer_token():
    import asyncio

    from aiohttp import web

    seen = []

    async def chat(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response(completion(["ok"]))

    async def main():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            eng = engine(f"http://127.0.0.1:{port}/v1", model="m", api_key="sk-test")
            assert await eng.generate(GenerationRequest(MSGS)) == ["ok"]
            await eng.aclose()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert seen == ["Bearer sk-test"]
