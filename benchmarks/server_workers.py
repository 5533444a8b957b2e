"""Throughput of ``grm-plugin serve`` with 1 and 2 worker processes (``--workers``), side by side.

Each cell starts ``grm-plugin serve --server <sim> --samples 1 --workers N`` as a real process
on 127.0.0.1 and sends it OpenRLHF-style single-sample requests from ``--clients`` concurrent
clients (httpx, keep-alive), then stops it. The judge is the simulated server
(``grm_plugin.testing.SimServerProcess``, in its own process) with a capacity far above the
load, so the cell measures the serve processes: HTTP, the OpenRLHF adapter, the judge prompt and
parser, grouping, and with ``--workers 2`` the front's hop. Cells alternate (1, 2, 1, 2, ...)
so that a change in the machine's load hits both alike.

Three workloads: ``single`` (every request a different prompt, ``--group-window 0``: the judge
is called once per request), ``groups`` (8 samples per prompt from 8 clients, group window 0.5 s:
each group one judgment; requests of a prompt meet in one worker) and ``groups-k4`` (the same,
k = 4 judgments per group: more work per request in the worker, none more in the front).

Every answer is checked (HTTP 200, one reward, not a failure, the rule judge's reward for its
response). CPU seconds are those of the serve processes (the front and its workers), read from
/proc via psutil; the load average is the machine's before and after each cell.

    python benchmarks/server_workers.py                   # 2 rounds x 1,500 requests per cell
    python benchmarks/server_workers.py --requests 200 --rounds 1 --no-write

Results: benchmarks/results/server_workers.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "<|im_start|>user\nQuestion {i}: what is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n"
EOS = "<|im_end|><|endoftext|>"
#: a sim judge far faster than the serve processes: they are what is measured
FAST_JUDGE = {
    "capacity": {
        "prefill_tps": 1e9,
        "prefill_tps_per_seq": 1e9,
        "decode_tps": 1e9,
        "decode_tps_per_seq": 1e9,
        "max_batch": 4096,
        "request_overhead": 0.0,
        "output_tokens": 16,
    },
    "max_lifetime": 3600,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_body(i: int, group: int) -> tuple[dict, int]:
    """Request ``i`` (prompt ``i // group``) and its response's length (the rule's reward)."""
    p = i // group
    prompt = PROMPT.format(i=p, a=p % 97, b=p % 13)
    n = 1 + i % 8  # distinct lengths within a group of 8
    return {"query": [prompt + "x" * n + EOS], "prompts": [prompt], "labels": [""]}, n


def loadavg() -> float:
    return os.getloadavg()[0]


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of ``pid`` (and of its children: the front and the workers)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class Cell:
    workload: str
    workers: int
    round: int
    requests: int
    ok: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    serve_cpu_s: float
    cpu_ms_per_request: float
    front_cpu_ms_per_request: float
    judge_calls: int
    load_before: float
    load_after: float


async def drive(url: str, n: int, clients: int, group: int) -> tuple[int, list[float]]:
    """Send ``n`` requests from ``clients`` workers; (well-formed right answers, latencies)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ok = 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                i = queue.get_nowait()
                body, length = request_body(i, group)
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    out = r.json()
                except (httpx.HTTPError, ValueError) as e:
                    print(f"request {i}: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                latencies.append(time.perf_counter() - t0)
                good = (
                    r.status_code == 200
                    and len(out["rewards"]) == 1
                    and out["extra_logs"]["grm_failed"] == [0.0]
                    # the sim judge's rule: 1 + len(response) -> unit scale len / 9
                    and abs(out["rewards"][0] - min(length, 9) / 9) < 1e-9
                )
                ok += good
                if not good:
                    print(f"request {i}: {r.status_code} {r.text[:300]}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return ok, latencies


def run_cell(judge, workload: str, workers: int, rnd: int, n: int, clients: int) -> Cell:  # noqa: ANN001 - SimServerProcess
    group = 1 if workload == "single" else 8
    samples = 4 if workload == "groups-k4" else 1
    port = free_port()
    cmd = [sys.executable, "-m", "grm_plugin.cli.main", "serve", "--server", judge.urls[0]]
    cmd += ["--samples", str(samples), "--port", str(port)]
    cmd += ["--workers", str(workers), "--max-concurrent", "1024"]
    cmd += ["--group-window", "0" if group == 1 else "0.5"]
    env = {k: v for k, v in os.environ.items() if k != "GRM_PLUGIN_TOKEN"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while f"127.0.0.1:{port}" not in (line := proc.stderr.readline()):
            if not line:
                raise RuntimeError(f"serve did not start: {cmd}")
        url = f"http://127.0.0.1:{port}/get_reward"
        asyncio.run(drive(url, min(64, n), clients, group))  # warm-up, not counted
        calls0, cpu0, load0 = judge.stats().requests, cpu_seconds(proc.pid), loadavg()
        front0 = cpu_seconds(proc.pid, children=False)
        t0 = time.perf_counter()
        ok, lat = asyncio.run(drive(url, n, clients, group))
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        front = cpu_seconds(proc.pid, children=False) - front0
        calls = judge.stats().requests - calls0
        load1 = loadavg()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lat.sort()
    return Cell(
        workload=workload,
        workers=workers,
        round=rnd,
        requests=n,
        ok=ok,
        errors=n - ok,
        seconds=round(seconds, 2),
        throughput=round(n / seconds, 1),
        p50_ms=round(1000 * lat[len(lat) // 2], 1) if lat else float("nan"),
        p99_ms=round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else float("nan"),
        serve_cpu_s=round(cpu, 2),
        cpu_ms_per_request=round(1000 * cpu / n, 2),
        # with --workers 1 the one process is the server itself, not a front
        front_cpu_ms_per_request=round(1000 * front / n, 2) if workers > 1 else 0.0,
        judge_calls=calls,
        load_before=round(load0, 2),
        load_after=round(load1, 2),
    )


def report(cells: list[Cell], command: str, machine: str) -> str:
    lines = [
        "# `grm-plugin serve --workers N`: throughput with 1 and 2 workers",
        "",
        f"Command: `{command}`. {machine}",
        "",
        "Judge: the simulated server in its own process, capacity far above the load (it is not",
        "the limit). `single`: every request a new prompt, `--group-window 0`. `groups`: 8",
        "samples per prompt (one per request), group window 0.5 s. `groups-k4`: the same with",
        "k = 4 (`--samples 4`). Clients: httpx keep-alive, one sample per request. Serve CPU:",
        "the front and its workers together (psutil), and in brackets the front's share.",
        "",
        "| workload | workers | round | right answers | throughput (req/s) | p50 / p99 ms "
        "| serve CPU ms/request (of it the front) | judge calls | load avg before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.workload} | {c.workers} | {c.round} | {c.ok} / {c.requests} | {c.throughput} "
            f"| {c.p50_ms} / {c.p99_ms} | {c.cpu_ms_per_request} ({c.front_cpu_ms_per_request}) "
            f"| {c.judge_calls} "
            f"| {c.load_before} / {c.load_after} |"
        )
    lines += ["", "Mean throughput (req/s):", ""]
    for workload in dict.fromkeys(c.workload for c in cells):
        for w in sorted({c.workers for c in cells}):
            got = [c.throughput for c in cells if c.workload == workload and c.workers == w]
            lines.append(f"- {workload}, {w} worker(s): {statistics.mean(got):.1f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1500, help="per cell")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workloads", nargs="+", default=["single", "groups", "groups-k4"])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from grm_plugin.testing import SimServerProcess

    command = "python benchmarks/server_workers.py " + " ".join(argv or sys.argv[1:])
    machine = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"Python {platform.python_version()}."
    )
    cells: list[Cell] = []
    with SimServerProcess(FAST_JUDGE) as judge:
        for workload in args.workloads:
            for rnd in range(1, args.rounds + 1):
                for w in args.workers:
                    cell = run_cell(judge, workload, w, rnd, args.requests, args.clients)
                    print(json.dumps(asdict(cell)), flush=True)
                    cells.append(cell)
    text = report(cells, command.strip(), machine)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        data = {"command": command.strip(), "machine": machine, "cells": [asdict(c) for c in cells]}
        (RESULTS / "server_workers.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "server_workers.md").write_text(text)
    return 0 if all(c.errors == 0 for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
