"""The client at the floor: CPU per judgment of grm-plugin vs a bare aiohttp client sending the
same requests to the same simulated judge server, side by side in one run.

    python benchmarks/client_floor.py --sizes 512 2048 8192 --samples 1 --repeats 2 \\
        --out benchmarks/results/client_floor

The server (``grm_plugin.testing.SimServerProcess``) runs in its own process with a capacity far
above what one client process can send, so the client's CPU is the limit; CPU is this process's
(``time.process_time``: every thread, including the one grm-plugin parses in). The bare client
gets the judge prompts ready-made (``GenerativeRewardFn.judge_messages``, outside its timing)
and only serialises, sends, reads and decodes: the floor any OpenAI-wire client pays. Two
grm-plugin figures: its ``openai`` engine alone (``generate`` on the same ready-made prompts:
the transport, retries, timeouts, replica choice) and the whole reward (``ascore_batch``:
validation, prompt, truncation check, engine, parse, vote, cache lookup). They run back to back
per size, so that all see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import aiohttp

from grm_plugin import GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.testing.sim_server import SimServerProcess

#: far above one client process: the server is never the bottleneck
FAST = {
    "prefill_tps": 1e9,
    "prefill_tps_per_seq": 1e8,
    "decode_tps": 1e8,
    "decode_tps_per_seq": 1e7,
    "max_batch": 4096,
    "request_overhead": 0.0,
    "output_tokens": 64,
}
CONCURRENCY = 64


def items(n: int, tag: str) -> tuple[list[str], list[list[str]]]:
    """``n`` distinct items of two responses (distinct: no judgment is reused from the cache)."""
    prompts = [f"[{tag}] What is {i} + {i}? Explain briefly." for i in range(n)]
    responses = [[f"It is {2 * i}.", f"I think {i} + {i} = {2 * i + 1}."] for i in range(n)]
    return prompts, responses


async def bare_client(url: str, model: str, messages: list[list[dict]], k: int) -> float:
    """Send one chat completion per item (n=k), as a minimal aiohttp client would; CPU s."""
    sem = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": "Bearer EMPTY", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def one(msgs: list[dict]) -> list[str]:
            body = {"model": model, "messages": msgs, "n": k, "temperature": 0.0}
            body["max_tokens"] = 768
            async with sem:
                async with session.post(url + "/chat/completions", data=json.dumps(body)) as r:
                    raw = await r.read()
            return [c["message"]["content"] for c in json.loads(raw)["choices"]]

        cpu = time.process_time()
        outs = await asyncio.gather(*(one(m) for m in messages))
        cpu = time.process_time() - cpu
    assert all(len(o) == k for o in outs)
    return cpu


async def engine_only(rm: GenerativeRewardFn, messages: list[list[dict]], k: int) -> float:
    """The reward's engine alone on the same prompts; CPU s."""
    cpu = time.process_time()
    outs = await asyncio.gather(
        *(rm.engine.generate(GenerationRequest(m, n=k, request_timeout=600)) for m in messages)
    )
    cpu = time.process_time() - cpu
    assert all(len(o) == k for o in outs)
    return cpu


async def grm_client(rm: GenerativeRewardFn, prompts: list[str], responses: list[list[str]]):
    cpu = time.process_time()
    results = await rm.ascore_batch(prompts, responses)
    cpu = time.process_time() - cpu
    failed = sum(r.failed for r in results)
    assert failed == 0, f"{failed} items failed: {next(r.error for r in results if r.failed)}"
    return cpu


def run(sizes: list[int], k: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    with SimServerProcess({"capacity": FAST, "max_lifetime": 3600}) as server:
        url = server.urls[0]
        cfg = OpenAIEngineConfig(base_url=url, model="sim-judge", concurrency=CONCURRENCY)
        rm = GenerativeRewardFn(cfg, samples=k, shuffle=False, deadline={"batch": 600})

        async def main() -> None:
            # warm-up: connections, imports, first-call paths
            p, r = items(64, "warm")
            await grm_client(rm, p, r)
            msgs = [rm.judge_messages(a, b, [0, 1]) for a, b in zip(p, r, strict=True)]
            await bare_client(url, "sim-judge", msgs, k)
            await engine_only(rm, msgs, k)
            for size in sizes:
                for rep in range(repeats):
                    p, r = items(size, f"{size}-{rep}")
                    msgs = [rm.judge_messages(a, b, [0, 1]) for a, b in zip(p, r, strict=True)]
                    bare = await bare_client(url, "sim-judge", msgs, k)
                    engine = await engine_only(rm, msgs, k)
                    ours = await grm_client(rm, p, r)
                    per = 1000 / (size * k)
                    row = {
                        "items": size,
                        "k": k,
                        "repeat": rep,
                        "bare_cpu_ms_per_judgment": bare * per,
                        "engine_cpu_ms_per_judgment": engine * per,
                        "grm_cpu_ms_per_judgment": ours * per,
                        "engine_ratio": engine / bare,
                        "ratio": ours / bare,
                    }
                    print(
                        f"items={size:5d} k={k} bare {bare * per:.3f} ms  "
                        f"engine {engine * per:.3f} ms ({engine / bare:.2f}x)  "
                        f"reward {ours * per:.3f} ms ({ours / bare:.2f}x)",
                        flush=True,
                    )
                    rows.append(row)
            await rm.aclose()

        asyncio.run(main())
    return rows


def write(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    meta = {"command": command, "python": platform.python_version(), "machine": platform.machine()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Client at the floor: CPU per judgment, grm-plugin vs a bare aiohttp client",
        "",
        f"`{command}` (Python {meta['python']}; a shared 2-core machine: absolute numbers move "
        "with its load, the ratio much less: both clients run back to back in one process).",
        "",
        "CPU ms per judgment. *engine*: grm-plugin's `openai` engine alone on the same "
        "prompts; *reward*: the whole `GenerativeRewardFn.ascore_batch`; ratios are to bare.",
        "",
        "| items | k | bare aiohttp | engine | engine / bare | reward | reward / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['items']} | {r['k']} | {r['bare_cpu_ms_per_judgment']:.3f} "
            f"| {r['engine_cpu_ms_per_judgment']:.3f} | {r['engine_ratio']:.2f} "
            f"| {r['grm_cpu_ms_per_judgment']:.3f} | {r['ratio']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--samples", type=int, default=1, help="k judgments per item")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    rows = run(args.sizes, args.samples, args.repeats)
    if args.out:
        sizes = " ".join(map(str, args.sizes))
        command = (
            f"python benchmarks/client_floor.py --sizes {sizes} --samples {args.samples} "
            f"--repeats {args.repeats} --out {args.out}"
        )
        write(rows, args.out, command)


if __name__ == "__main__":
    main()
