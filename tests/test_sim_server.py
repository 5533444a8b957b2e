"""The simulated continuous-batching judge server: capacity model, answers, faults, bounds.

Real HTTP on 127.0.0.1 with the real ``openai`` engine; counts come from the server's own
counters, never from the wall clock.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.testing import (
    CapacityModel,
    Fault,
    FaultKind,
    FaultPlan,
    SimServer,
    SimServerConfig,
    SimServerProcess,
    length_score,
)
from grm_plugin.testing.capacity import SharedStage

#: fast enough that every test here takes well under a second of simulated time
FAST = {"decode_tps": 1e6, "decode_tps_per_seq": 1e5, "output_tokens": 8, "request_overhead": 0}
PROMPTS = ["Say hi", "Name a color", "Count to three"]
RESPONSES = [["hi", "hello there"], ["red", "blue-green"], ["1 2 3", "one, two, three"]]


def rm_for(urls: list[str] | str, samples: int = 2, **deadline: float) -> GenerativeRewardFn:
    return GenerativeRewardFn.from_config(
        JudgeConfig.model_validate(
            {
                "engine": {"type": "openai", "base_url": urls, "max_retries": 4},
                "sampling": {"samples": samples},
                "deadline": {"request": 2.0, **deadline},
            }
        )
    )


def expected(responses: list[str]) -> list[float]:
    return [length_score(r) for r in responses]


def test_ceiling_is_the_slower_stage() -> None:
    cap = CapacityModel(
        prefill_tps=10_000, decode_tps=6_400, decode_tps_per_seq=200, max_batch=16, output_tokens=64
    )
    # decode: a full batch of 16 at 200 tokens/s each = 3200 < 6400 tokens/s -> 50 samples/s
    assert cap.decode_capacity == 3_200
    assert cap.ceiling(prefill_tokens_per_sample=100) == pytest.approx(50.0)
    # prefill-bound when prompts are long: 10,000 / 500 = 20 samples/s
    assert cap.ceiling(prefill_tokens_per_sample=500) == pytest.approx(20.0)
    assert cap.output_len(16) == 16 and cap.output_len(None) == 64


async def test_shared_stage_queues_beyond_its_slots() -> None:
    stage = SharedStage(total=1e6, per_job=1e5, slots=1)
    done: list[int] = []

    async def job(i: int) -> None:
        await stage.run(10.0)
        done.append(i)

    await asyncio.gather(*(job(i) for i in range(5)))
    assert done == [0, 1, 2, 3, 4]  # one slot: strictly first come, first served
    assert stage.running == 0


def test_scores_follow_the_rule_through_the_real_client() -> None:
    with SimServer({"capacity": FAST}) as server:
        results = rm_for(server.url, samples=4).score_batch(PROMPTS, RESPONSES)
        stats = server.stats()
    for res, responses in zip(results, RESPONSES, strict=True):
        assert not res.failed
        assert res.scores == expected(responses)
        assert res.num_valid == 4
    # k=4 over two responses = 2 orders x n=2: 2 requests per item, 4 samples per item
    assert stats.requests == 2 * len(PROMPTS) and stats.samples == 4 * len(PROMPTS)
    assert stats.decode_tokens == stats.samples * 8


def test_prefix_cache_makes_n_samples_cheaper_than_separate_requests() -> None:
    body = {
        "model": "sim-judge",
        "messages": [{"role": "user", "content": "judge this " * 200}],
        "max_tokens": 8,
    }
    counts = {}
    for cache in (True, False):
        with SimServer({"capacity": {**FAST, "prefix_cache": cache}}) as server:
            httpx.post(server.url + "/chat/completions", json={**body, "n": 4}, timeout=10)
            one = server.stats().prefill_tokens
            for _ in range(4):
                httpx.post(server.url + "/chat/completions", json={**body, "n": 1}, timeout=10)
            counts[cache] = (one, server.stats().prefill_tokens - one)
    tokens = CapacityModel().tokens(body["messages"][0]["content"])
    assert counts[False] == (4 * tokens, 4 * tokens)  # no cache: every sample pays
    assert counts[True][0] == tokens  # n=4 shares one prefill
    assert counts[True][1] <= 4 * 16  # repeats: at most the last partial block each


@pytest.mark.parametrize("kind", list(FaultKind))
def test_every_fault_kind_is_retried_to_a_score(kind: FaultKind) -> None:
    config = {"capacity": FAST, "faults": {"spike_delay": 0.05, "hang_seconds": 5.0}}
    with SimServer(config) as server:
        server.faults.inject(kind)
        res = rm_for(server.url, samples=1).score(PROMPTS[0], RESPONSES[0])
        stats = server.stats()
    assert res.scores == expected(RESPONSES[0])
    assert stats.faults == {kind.value: 1}
    retried = kind is not FaultKind.LATENCY_SPIKE
    assert stats.requests == 1 + retried  # the faulty try and one retry (a spike just waits)


def test_rate_limit_retry_after_is_honoured() -> None:
    plan = FaultPlan(retry_after=0.3)
    with SimServer({"capacity": FAST, "faults": plan}) as server:
        server.faults.inject(FaultKind.RATE_LIMIT, times=2)
        res = rm_for(server.url, samples=1).score(PROMPTS[0], RESPONSES[0])
        assert server.stats().requests == 3
    assert res.scores == expected(RESPONSES[0])


def test_faults_by_rate_lose_no_item() -> None:
    rates = {k.value: 0.05 for k in FaultKind if k is not FaultKind.HANG}
    config = {"capacity": FAST, "faults": {"rates": rates, "seed": 3, "spike_delay": 0.05}}
    prompts = [f"Question {i}?" for i in range(40)]
    responses = [[f"answer {i}", f"a longer answer {i}"] for i in range(40)]
    with SimServer(config) as server:
        results = rm_for(server.url, samples=2).score_batch(prompts, responses)
        stats = server.stats()
    assert sum(stats.faults.values()) > 0
    assert all(not r.failed for r in results)
    assert [r.scores for r in results] == [expected(r) for r in responses]


def test_per_request_fault_from_the_body() -> None:
    with SimServer({"capacity": FAST}) as server:
        r = httpx.post(
            server.url + "/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "sim_fault": "server_error"},
            timeout=10,
        )
        assert r.status_code == 500
        bad = httpx.post(server.url + "/chat/completions", json={"n": 2}, timeout=10)
        assert bad.status_code == 400 and "messages" in bad.text
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}
        bad = httpx.post(server.url + "/chat/completions", json=body, timeout=10)
        assert bad.status_code == 400 and "many" in bad.text


def test_scripted_texts_then_the_rule() -> None:
    with SimServer({"capacity": FAST}) as server:
        server.script(["no scores in this judgment"])
        res = rm_for(server.url, samples=1).score(PROMPTS[0], RESPONSES[0])
    # the scripted sample fails to parse, the parse retry gets the rule's judgment
    assert [s.failure_kind.value if s.failure_kind else None for s in res.samples] == [
        "parse",
        None,
    ]
    assert res.scores == expected(RESPONSES[0])


def test_replicas_share_the_load() -> None:
    with SimServer({"capacity": FAST, "replicas": 2}) as server:
        assert len(server.urls) == 2
        prompts = [f"Question {i}?" for i in range(20)]
        responses = [["a", "bb"]] * 20
        results = rm_for(server.urls, samples=1).score_batch(prompts, responses)
        per_replica = server.stats().per_replica
    assert all(not r.failed for r in results)
    assert sum(per_replica) == 20 and min(per_replica) > 0


def test_bounded_in_requests_and_lifetime() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SimServerConfig(host="0.0.0.0")
    server = SimServer({"capacity": FAST, "max_requests": 2}).start()
    body = {"messages": [{"role": "user", "content": "x"}]}
    codes = [
        httpx.post(server.url + "/chat/completions", json=body, timeout=10).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 503]
    assert server.stopped.wait(10)  # it stops by itself after the limit
    server.stop()
    short = SimServer({"capacity": FAST, "max_lifetime": 0.2}).start()
    assert short.stopped.wait(10)
    short.stop()


def test_in_its_own_process() -> None:
    with SimServerProcess({"capacity": FAST, "replicas": 2, "max_lifetime": 60}) as proc:
        assert len(proc.urls) == 2
        res = rm_for(proc.urls, samples=2).score(PROMPTS[1], RESPONSES[1])
        assert res.scores == expected(RESPONSES[1])
        assert proc.stats().requests >= 1
    assert proc.proc is not None and proc.proc.poll() is not None


def test_fault_values() -> None:
    assert Fault(FaultKind.RATE_LIMIT).status == 429
    with pytest.raises(ValueError):
        FaultPlan(rates={"drop": 0.8, "hang": 0.5})


def test_at_scale_benchmark_runs_against_a_given_server(tmp_path) -> None:
    """``--server`` (the real-fleet mode) end to end, tiny: the script is unchanged for vLLM."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "at_scale.py"
    with SimServer({"capacity": FAST}) as server:
        out = tmp_path / "at_scale"
        cmd = [sys.executable, str(script), "--server", server.url, "--capacity", "50"]
        cmd += ["--sizes", "6", "--ks", "1,2", "--naive-items", "2", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert [(r["items"], r["k"], r["b"]["answered"]) for r in report["rows"]] == [
        (6, 1, 6),
        (6, 2, 6),
    ]
    assert all(r["c"]["judgments_per_s"] == 50 for r in report["rows"])
    assert "| main | 1 | 6 | 2 |" in out.with_suffix(".md").read_text()
