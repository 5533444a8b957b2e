"""Judgments saved by grouping on the server path: one GRPO-like step through ``grm-plugin serve``.

A step is ``--prompts`` prompts x ``--samples`` samples, posted as OpenRLHF 0.11.2 posts them:
one request per sample, each sent when that sample "finishes generating" (a random delay of
0-``--spread`` seconds after the step starts; samples of one prompt are generated together, so
they finish at different times). Responses repeat within a prompt the way short-answer tasks
do: each prompt has a small pool of distinct answers (1 to ``--samples``, uniformly) that its
samples draw from, so some groups are all one answer and some all different.

The server is ``create_app`` + uvicorn on 127.0.0.1 with the settings ``grm-plugin serve``
uses; the judge is a recording double (``RuleJudgeEngine``, a delay of 20 ms + 5 ms per response
shown): this counts judge calls and responses shown, not a model's speed. The same step is run
side by side with grouping off (``--group-window 0``: every sample judged alone, as before) and
with several windows, ``--group-size`` = ``--samples``.

    python benchmarks/server_grouping.py                  # 64 prompts x 8 samples, spread 2 s
    python benchmarks/server_grouping.py --prompts 8 --no-write

Results: benchmarks/results/server_grouping.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "<|im_start|>user\nQuestion {i}: what is {i} squared?<|im_end|>\n<|im_start|>assistant\n"
EOS = "<|im_end|><|endoftext|>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_step(prompts: int, samples: int, spread: float, seed: int, repeats: bool) -> list[dict]:
    """The step's samples: prompt index, response, send delay. ``repeats``: short answers drawn
    from a pool of 1..samples distinct ones per prompt; else every response differs."""
    rng = random.Random(seed)
    step = []
    for i in range(prompts):
        size = rng.randint(1, samples) if repeats else samples
        pool = [f"The answer is {i * i + j}." for j in range(size)]
        picks = [rng.choice(pool) for _ in range(samples)] if repeats else pool
        for response in picks:
            step.append({"prompt": i, "response": response, "delay": rng.uniform(0, spread)})
    return step


def run_step(step: list[dict], window: float, group_size: int, cache: bool) -> dict:
    """Serve with this window (and the judgment cache on or off), post the step; the counts."""
    import uvicorn

    from grm_plugin import GenerativeRewardFn
    from grm_plugin.adapters.openrlhf import OpenRLHFProtocol
    from grm_plugin.server import ServerSettings, create_app
    from grm_plugin.testing import RuleJudgeEngine, shown_responses

    shown: list[int] = []

    class RecordingJudge(RuleJudgeEngine):
        async def generate(self, request):  # type: ignore[override]
            n = len(shown_responses(request))
            shown.append(n)
            await asyncio.sleep(0.02 + 0.005 * n)
            out = await super().generate(request)
            self.requests.clear()
            return out

    port = free_port()
    settings = ServerSettings(port=port, group_window=window, group_size=group_size)
    judge_cfg = {
        "sampling": {"samples": 1, "parse_retries": 0},
        "cache": {"max_items": 4096 if cache else 0},
    }
    rm = GenerativeRewardFn.from_config(judge_cfg, engine=RecordingJudge())
    app = create_app(rm, OpenRLHFProtocol(), settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    # the clients run in their own process: in this one they would compete with the server
    # for the GIL and delay its reading of requests (which splits groups the window would keep)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--client-port", str(port)],
        input=json.dumps(step),
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    answers = json.loads(proc.stdout)
    server.should_exit = True
    thread.join(30)
    groups = app.state.batcher.stats.groups_by_size
    failed = sum(a["extra_logs"]["grm_failed"][0] for a in answers)
    per_prompt: dict[int, set[str]] = {}
    for s in step:
        per_prompt.setdefault(s["prompt"], set()).add(s["response"])
    return {
        "group_window_s": window,
        "cache": cache,
        "judge_calls": len(shown),
        "responses_shown": sum(shown),
        "samples": len(step),
        "samples_per_judge_call": len(step) / len(shown),
        "judge_call_sizes": dict(sorted(Counter(shown).items())),
        "samples_judged_alone": groups.get(1, 0),
        "groups_by_samples": dict(sorted(groups.items())),
        "failed": int(failed),
        "wall_s": wall,
    }


def post_step(port: int, step: list[dict]) -> list[dict]:
    """The clients: each sample's request sent after its delay, a new connection each."""

    async def post_all() -> list[dict]:
        limits = httpx.Limits(max_connections=len(step), max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=180, limits=limits) as c:

            async def one(s: dict) -> dict:
                await asyncio.sleep(s["delay"])
                prompt = PROMPT.format(i=s["prompt"])
                body = {"query": [prompt + s["response"] + EOS], "prompts": [prompt],
                        "labels": [""]}  # fmt: skip
                r = await c.post(f"http://127.0.0.1:{port}/get_reward", json=body)
                r.raise_for_status()
                return r.json()

            return await asyncio.gather(*(one(s) for s in step))

    return asyncio.run(post_all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (= group size)")
    ap.add_argument("--spread", type=float, default=2.0, help="seconds over which samples finish")
    ap.add_argument("--windows", type=float, nargs="+", default=[0.0, 0.25, 1.0, 2.5, 5.0])
    # (window 0 with the cache on is the cache's own saving: identical samples of a prompt)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--client-port", type=int, help=argparse.SUPPRESS)  # the client process
    args = ap.parse_args()
    if args.client_port:
        print(json.dumps(post_step(args.client_port, json.loads(sys.stdin.read()))))
        return

    scenarios = []
    for name, repeats in [("short answers (repeats)", True), ("all responses distinct", False)]:
        step = make_step(args.prompts, args.samples, args.spread, args.seed, repeats)
        distinct = len({(x["prompt"], x["response"]) for x in step})
        # the old behaviour (every sample alone, no cache), then the cache alone (window 0),
        # then grouping with the cache
        runs = [run_step(step, 0.0, args.samples, cache=False)]
        runs += [run_step(step, w, args.samples, cache=True) for w in args.windows]
        base = runs[0]
        for r in runs:
            # pointwise = window 0, no cache: one judge call per sample, as before grouping
            r["judge_calls_saved_vs_pointwise"] = 1 - r["judge_calls"] / base["judge_calls"]
            r["responses_shown_saved_vs_pointwise"] = (
                1 - r["responses_shown"] / base["responses_shown"]
            )
        scenarios.append(
            {
                "scenario": name,
                "samples": len(step),
                "distinct_responses": distinct,
                "duplicate_rate": 1 - distinct / len(step),
                "runs": runs,
            }
        )
    out = {
        "command": "python benchmarks/server_grouping.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(map(str, v))}"
            for k, v in vars(args).items()
            if k not in ("no_write", "client_port")
        ),
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "spread_s": args.spread,
        "scenarios": scenarios,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    print(json.dumps(out, indent=2))
    if args.no_write:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_grouping.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Judgments saved by grouping on the server path",
        "",
        f"`{out['command']}` ({out['machine']}, load average {out['load_average']})",
        "",
        f"One GRPO-like step: {args.prompts} prompts x {args.samples} samples = "
        f"{args.prompts * args.samples} single-sample requests (OpenRLHF's pattern), each sent "
        f"as its sample finishes (uniform over {args.spread} s). Judge: a recording double "
        "(20 ms + 5 ms per response shown); clients in a separate process (wall s includes "
        "starting it, ~1 s). Same step, same server, side by side. The first row "
        "of each table is the old behaviour (every sample its own judge call); the second adds "
        "only the core's judgment cache (identical samples of a prompt judged once).",
        "",
    ]
    for sc in scenarios:
        lines += [
            f"## {sc['scenario']}: {sc['distinct_responses']} distinct of {sc['samples']} "
            f"(duplicate rate {sc['duplicate_rate']:.0%})",
            "",
            "| group window | cache | judge calls | saved vs pointwise | responses shown | saved "
            "| samples judged alone | wall s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sc["runs"]:
            lines.append(
                f"| {r['group_window_s']} s | {'on' if r['cache'] else 'off'} | "
                f"{r['judge_calls']} | {r['judge_calls_saved_vs_pointwise']:.0%} | "
                f"{r['responses_shown']} | {r['responses_shown_saved_vs_pointwise']:.0%} | "
                f"{r['samples_judged_alone']} | {r['wall_s']:.1f} |"
            )
        lines.append("")
    lines += [
        "A window shorter than the spread of finishing times splits groups (more calls, more "
        "samples judged alone, and partial response sets that the cache rarely matches). "
        "Groups are also split when the server reads requests late: on a busy machine the "
        "arrival times it sees are spread wider than the send times (compare the pointwise "
        "wall time with the spread). A group closes as soon as it has --group-size samples, so "
        "a window longer than needed costs little.",
        "",
    ]
    (RESULTS / "server_grouping.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
