"""Load test of the reward server as OpenRLHF drives it: many single-sample requests at once.

The server is ``create_app`` + uvicorn with the settings ``grm-plugin serve`` uses, run in a
subprocess on 127.0.0.1 so that its memory is measured alone. Its judge is a test double
(``RuleJudgeEngine`` with a random delay of 0-``--delay`` seconds per judgment): this measures
the server (HTTP, parsing, the adapter, the judge prompt and parser, concurrency), not a model.

Each client behaves like an OpenRLHF rollout worker: one sample per POST, body
``{"query": [prompt + response], "prompts": [prompt], "labels": [""]}``, a new connection per
request, a 180 s timeout. Every answer is checked: HTTP 200, ``rewards``/``scores`` of one finite
float, ``extra_logs`` with exactly the adapter's flag keys, and the reward the rule judge gives
that request's response (which also shows that no answer went to the wrong request).

    python benchmarks/server_load.py                      # 2,000 requests, 64 clients
    python benchmarks/server_load.py --requests 300 --clients 32 --no-write

Results: benchmarks/results/server_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: what OpenRLHF's client waits before it retries (REFERENCE.md §3)
CLIENT_TIMEOUT = 180.0
PROMPT = "<|im_start|>user\nQuestion {i}: what is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n"
EOS = "<|im_end|><|endoftext|>"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_body(i: int) -> tuple[dict, str]:
    """Request ``i`` as OpenRLHF sends it, and the response text in it (length varies with i)."""
    prompt = PROMPT.format(i=i, a=i % 97, b=i % 13)
    response = "x" * (1 + i % 11)  # 1..11 chars: the rule judge's reward tells them apart
    body = {"query": [prompt + response + EOS], "prompts": [prompt], "labels": [""]}
    return body, response


def rule_reward(response: str) -> float:
    """The reward the server gives ``response`` with RuleJudgeEngine (unit scale)."""
    from grm_plugin.testing import length_score

    return (length_score(response) - 1) / 9


def check_answer(status: int, data: object, log_keys: set[str]) -> str | None:
    """None if the answer is a well-formed single-sample OpenRLHF answer, else what is wrong."""
    if status != 200:
        return f"HTTP {status}"
    if not isinstance(data, dict) or set(data) != {"rewards", "scores", "extra_logs"}:
        return f"keys {sorted(data) if isinstance(data, dict) else type(data).__name__}"
    for key in ("rewards", "scores"):
        v = data[key]
        ok = isinstance(v, list) and len(v) == 1 and isinstance(v[0], (int, float))
        if not ok or not math.isfinite(v[0]):
            return f"{key} = {v!r}"
    logs = data["extra_logs"]
    if not isinstance(logs, dict) or set(logs) != log_keys:
        return f"extra_logs keys {sorted(logs) if isinstance(logs, dict) else logs!r}"
    if any(not isinstance(v, list) or len(v) != 1 for v in logs.values()):
        return f"extra_logs lengths {logs!r}"
    return None


@dataclass
class LoadResult:
    """What the clients saw: one entry per request sent."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    wall: float = 0.0


async def run_clients(
    url: str,
    n_requests: int,
    n_clients: int,
    *,
    log_keys: set[str],
    expect: bool = True,
    timeout: float = CLIENT_TIMEOUT,
) -> LoadResult:
    """``n_clients`` workers send ``n_requests`` single-sample requests in total.

    ``expect``: also check each reward against the rule judge's (a test-double server only).
    """
    result = LoadResult()
    next_i = iter(range(n_requests))
    # no keep-alive: OpenRLHF opens a new connection for every sample
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=0)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in next_i:  # a shared iterator: each request is taken by exactly one worker
            body, response = sample_body(i)
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                data = r.json()
                status = r.status_code
            except Exception as e:  # noqa: BLE001 - a load test counts failures, it does not stop
                result.errors.append(f"request {i}: {type(e).__name__}: {e}")
                continue
            result.latencies.append(time.perf_counter() - t0)
            problem = check_answer(status, data, log_keys)
            if (
                problem is None
                and expect
                and not math.isclose(data["rewards"][0], rule_reward(response), abs_tol=1e-9)
            ):
                problem = f"reward {data['rewards'][0]} for a {len(response)}-char response"
            if problem is not None:
                result.errors.append(f"request {i}: {problem}")
            else:
                result.answers.append(data)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(n_clients)))
    result.wall = time.perf_counter() - t0
    return result


def latency_stats(latencies: list[float]) -> dict[str, float]:
    """p50/p99/max in seconds (nearest-rank percentiles)."""
    if not latencies:
        return {"p50_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    xs = sorted(latencies)

    def pct(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

    return {"p50_s": pct(50), "p99_s": pct(99), "max_s": xs[-1], "mean_s": statistics.mean(xs)}


def wait_healthy(base: str, proc: subprocess.Popen, limit: float) -> None:
    """Block until GET /health answers, or raise if the server died or took too long."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy within {limit:.0f} s")


class RssSampler:
    """Samples a process's resident memory every ``every`` seconds in the background."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._every = every
        self.peak = 0
        self._task: asyncio.Task | None = None

    def rss(self) -> int:
        value = self._proc.memory_info().rss
        self.peak = max(self.peak, value)
        return value

    async def _loop(self) -> None:
        while True:
            self.rss()
            await asyncio.sleep(self._every)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def serve(port: int, delay: float, seed: int) -> None:
    """The server process: create_app + uvicorn as ``grm-plugin serve`` runs them."""
    import uvicorn

    from grm_plugin import GenerativeRewardFn
    from grm_plugin.adapters.openrlhf import DEFAULT_DEADLINE_S, OpenRLHFProtocol
    from grm_plugin.server import ServerSettings, create_app
    from grm_plugin.testing import RuleJudgeEngine

    rng = random.Random(seed)

    class DelayedRuleJudge(RuleJudgeEngine):
        """RuleJudgeEngine that takes 0-``delay`` s per call, like a fast remote judge."""

        async def generate(self, request):  # type: ignore[override]
            await asyncio.sleep(rng.uniform(0.0, delay))
            out = await super().generate(request)
            self.requests.clear()  # the double records requests; a load test must not grow it
            return out

    rm = GenerativeRewardFn(DelayedRuleJudge(), samples=1, parse_retries=0)
    # distinct prompts throughout: grouping would only add its window to every request
    settings = ServerSettings(port=port, group_window=0)
    uvicorn.run(
        create_app(rm, OpenRLHFProtocol(), settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_keep_alive=5,
        access_log=False,
        timeout_graceful_shutdown=int(DEFAULT_DEADLINE_S) + 5,
    )


async def measure(args: argparse.Namespace) -> dict:
    """Start the server, warm it up, run the load, return the numbers."""
    from grm_plugin.adapters.openrlhf import LOG_KEYS

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, __file__, "--serve-port", str(port), "--delay", str(args.delay)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        await asyncio.to_thread(wait_healthy, base, proc, 60.0)
        sampler = RssSampler(proc.pid)
        # a few requests first, so imports and first-use caches are not counted as growth
        await run_clients(f"{base}/get_reward", 32, 8, log_keys=set(LOG_KEYS))
        rss_before = sampler.rss()
        sampler.peak = rss_before
        sampler.start()
        res = await asyncio.wait_for(
            run_clients(f"{base}/get_reward", args.requests, args.clients, log_keys=set(LOG_KEYS)),
            timeout=args.time_limit,
        )
        await asyncio.sleep(1.0)  # let the server settle (connections closed, tasks done)
        rss_after = sampler.rss()
        await sampler.stop()
        health = httpx.get(f"{base}/health", timeout=5).json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = len(res.answers)
    mib = 1024 * 1024
    return {
        "benchmark": "server_load",
        "judge": f"RuleJudgeEngine test double, random delay 0-{args.delay} s per judgment",
        "server": "create_app + uvicorn (grm-plugin serve settings), subprocess, 127.0.0.1",
        "client": "httpx, one sample per request, new connection per request, 180 s timeout",
        "requests": args.requests,
        "clients": args.clients,
        "answers_ok": ok,
        "errors": len(res.errors),
        "error_examples": res.errors[:10],
        "fallbacks": int(sum(a["extra_logs"]["grm_failed"][0] for a in res.answers)),
        "wall_s": res.wall,
        "throughput_rps": args.requests / res.wall,
        **latency_stats(res.latencies),
        "rss_before_mib": rss_before / mib,
        "rss_peak_mib": sampler.peak / mib,
        "rss_after_mib": rss_after / mib,
        "in_flight_after": health["in_flight"],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}",
    }


def write_results(out: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_load.json").write_text(json.dumps(out, indent=2) + "\n")
    md = f"""# Reward server under OpenRLHF-style load

{out["requests"]} single-sample requests from {out["clients"]} concurrent clients on 127.0.0.1;
{out["server"]}; judge: {out["judge"]}; client: {out["client"]}. Machine: {out["machine"]}.

| metric | value |
|---|---|
| well-formed answers with the right reward | {out["answers_ok"]} / {out["requests"]} |
| errors (no answer, non-200, malformed, wrong reward) | {out["errors"]} |
| fallback rewards | {out["fallbacks"]:g} |
| throughput | {out["throughput_rps"]:.0f} requests/s ({out["wall_s"]:.1f} s in all) |
| latency p50 / p99 / max | {out["p50_s"] * 1000:.0f} / {out["p99_s"] * 1000:.0f} / \
{out["max_s"] * 1000:.0f} ms |
| server RSS before / peak / after | {out["rss_before_mib"]:.0f} / {out["rss_peak_mib"]:.0f} / \
{out["rss_after_mib"]:.0f} MiB |
| requests in flight after the run | {out["in_flight_after"]} |

Reproduce: `python benchmarks/server_load.py`. The judge is a test double, so these numbers are
the server's own overhead (HTTP, adapter, prompt building and parsing on a shared 2-core CPU),
the ceiling a real judge's throughput is put under, not a model's speed.
"""
    (RESULTS / "server_load.md").write_text(md)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--delay", type=float, default=0.02, help="max judge delay, seconds")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole load")
    p.add_argument("--no-write", action="store_true", help="print only; keep results/ as is")
    p.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)  # the server subprocess
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_port is not None:
        serve(args.serve_port, args.delay, args.seed)
        return 0
    out = asyncio.run(measure(args))
    print(json.dumps(out, indent=2))
    if not args.no_write:
        write_results(out)
    return 0 if out["errors"] == 0 and out["answers_ok"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
