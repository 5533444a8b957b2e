"""Throughput at scale: the naive loop vs grm-plugin vs the server's own ceiling, 64 to 8,192 items.

Against a judge server whose capacity is known (``grm_plugin.testing``'s simulated
continuous-batching server, in its own process, capacity fixed for the whole run), for each
number of items and each k:

  (a) naive: what users write today: for each item, for each of the k samples, shuffle the two
      responses, send one request (n=1) with the plain ``openai`` client, parse, one after the
      other. Its rate per judgment does not depend on the number of items (nothing overlaps),
      so it is measured on the first ``--naive-items`` items and that rate is used for every
      size (the table says on how many items it was measured);
  (b) grm-plugin: ``GenerativeRewardFn.score_batch`` over the ``openai`` engine (concurrency 64,
      all items at once, k samples as one request per distinct response order with n = count);
  (c) the ceiling: the capacity model's saturated throughput for exactly the work (b) sent
      (``CapacityModel.ceiling`` with the prefill tokens per judgment the server counted), times
      the number of replicas. No client can beat it.

then b/a and b/c; the same with 2 and 4 replicas (several base URLs); and with 1% of the
requests faulty (429 with Retry-After, 500, dropped connections, truncated bodies, latency
spikes, hangs): every item must come back scored (none lost, none failed). Client CPU time per
judgment, RSS and the load average are recorded (the CPU is shared).

    python benchmarks/at_scale.py                       # the full run (~20 min on 2 cores)
    python benchmarks/at_scale.py --quick --no-write    # smoke test (~1 min)
    # a real vLLM fleet: (c) = 120 judgments/s if given, else skipped
    python benchmarks/at_scale.py --server http://10.0.0.1:8000/v1 \\
        --server http://10.0.0.2:8000/v1 --capacity 120

Router cells (``--router-only`` runs just these; ``--router-cells ""`` skips them in a full
run): the same 2 simulated replicas reached either through grm-plugin's own client-side
balancing (several base URLs, least outstanding requests first) or through a real router
(``vllm-router``, ``pip install vllm-router==0.1.17``) with its ``round_robin``,
``cache_aware`` or ``consistent_hash`` policy; for each, b/c and the simulated prefix-cache hit
rate (prompt tokens the replicas found cached / prompt tokens they were sent), for two
workloads: ``pairs`` (the items above: 2 responses, k samples as n = count requests per
response order), ``groups`` (a GRPO group of 8 responses in one judge prompt) and
``long-groups`` (the same behind a ~3,000-character document)::

    python benchmarks/at_scale.py --router-only --capacity-scale 0.25 \
        --out benchmarks/results/at_scale_router

With ``--server`` the script is unchanged except that (c) comes from ``--capacity`` (the
fleet's measured saturated judgments/s) and the replica and fault runs are skipped (replicas
are the URLs given; faults are whatever the fleet does). ``--max-tokens`` sets the judgment
length there. Results: benchmarks/results/at_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import secrets
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import psutil

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.parsing import parse_judgment
from grm_plugin.prompt import build_judge_messages
from grm_plugin.testing import (
    CapacityModel,
    FaultKind,
    Router,
    RouterConfig,
    SimServerProcess,
    router_available,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: the simulated replica: a judge that writes 64-token judgments; one sequence alone decodes at
#: 800 tokens/s, a full batch at 12,800 (16x: continuous batching), so the ceiling is 200
#: judgments/s per replica and one request alone takes ~95 ms. Chosen so that the full table
#: runs in ~20 min of real time and the client's CPU on a shared 2-core machine can keep up.
CAPACITY = CapacityModel(
    prefill_tps=200_000,
    prefill_tps_per_seq=50_000,
    decode_tps=12_800,
    decode_tps_per_seq=800,
    max_batch=64,
    request_overhead=0.005,
    output_tokens=64,
    prefix_cache=True,
)
#: 1% of chat requests faulty, spread over every fault kind
FAULT_RATES = {
    FaultKind.RATE_LIMIT: 0.002,
    FaultKind.SERVER_ERROR: 0.002,
    FaultKind.DROP: 0.002,
    FaultKind.TRUNCATE: 0.002,
    FaultKind.LATENCY_SPIKE: 0.0015,
    FaultKind.HANG: 0.0005,
}
#: a hang outlives the request timeout, so the client's timeout + retry is what ends it
REQUEST_TIMEOUT = 10.0
HANG_SECONDS = 30.0


def items(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n distinct pairwise items (a question, a right and a wrong answer of varied length)."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        prompts.append(f"Item {i}: what is {a} + {b}? Show the sum and say how you got it.")
        pad = " Adding the units, then the tens, then the hundreds." * rng.randint(0, 3)
        responses.append([f"{a} + {b} = {a + b}.{pad}", f"The sum is {a + b + rng.randint(1, 9)}."])
    return prompts, responses


def group_items(n: int, size: int = 8, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n GRPO groups judged whole: one question and ``size`` sampled answers per judge prompt."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for i in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        prompts.append(f"Group {i}: what is {a} + {b}? Show the sum and say how you got it.")
        group = []
        for j in range(size):
            total = a + b + (0 if rng.random() < 0.5 else rng.randint(1, 9))
            pad = " Adding the units, then the tens, then the hundreds." * rng.randint(0, 3)
            group.append(f"Answer {j}: {a} + {b} = {total}.{pad}")
        responses.append(group)
    return prompts, responses


def long_group_items(n: int, size: int = 8, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``group_items`` behind a ~3,000-character document (a RAG- or agent-style prompt): the
    part of the judge prompt that only the requests of one item share is then long."""
    rng = random.Random(seed + 1)
    prompts, responses = group_items(n, size, seed)
    words = ["ledger", "invoice", "quarter", "audit", "credit", "balance", "account", "total"]
    for i, prompt in enumerate(prompts):
        doc = " ".join(rng.choice(words) for _ in range(420))
        prompts[i] = f"Document {i}:\n{doc}\n\n{prompt}"
    return prompts, responses


#: router cells' workloads: name -> items(n)
WORKLOADS: dict[str, Callable[[int], tuple[list[str], list[list[str]]]]] = {
    "pairs": items,
    "groups": group_items,
    "long-groups": long_group_items,
}
#: the client's own balancing over several base URLs (no router)
CLIENT_SIDE = "client"


def make_rm(urls: list[str], k: int, model: str | None, max_tokens: int) -> GenerativeRewardFn:
    config = {
        "engine": {"type": "openai", "base_url": urls, "model": model, "concurrency": 64},
        "sampling": {"samples": k, "max_new_tokens": max_tokens},
        "deadline": {"request": REQUEST_TIMEOUT},
    }
    return GenerativeRewardFn.from_config(JudgeConfig.model_validate(config))


def naive(
    url: str, model: str, prompts: list[str], responses: list[list[str]], k: int, max_tokens: int
) -> dict[str, Any]:
    """(a) one judgment after the other, as in a plain reward-function loop."""
    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=600, max_retries=5)
    rng = random.Random(1)
    parsed = 0
    t, cpu = time.perf_counter(), time.process_time()
    for prompt, resp in zip(prompts, responses, strict=True):
        nonce = secrets.token_hex(4)
        for _ in range(k):
            order = rng.sample(range(len(resp)), len(resp))
            msgs = build_judge_messages(prompt, [resp[i] for i in order], nonce=nonce)
            out = client.chat.completions.create(
                model=model,
                messages=msgs,
                max_tokens=max_tokens,
                temperature=0.0 if k == 1 else 0.5,
            )
            parsed += parse_judgment(out.choices[0].message.content or "", 2).scores is not None
    elapsed = time.perf_counter() - t
    judgments = len(prompts) * k
    return {
        "items": len(prompts),
        "judgments": judgments,
        "seconds": elapsed,
        "judgments_per_s": judgments / elapsed,
        "parsed": parsed,
        "client_cpu_ms_per_judgment": (time.process_time() - cpu) / judgments * 1e3,
    }


def plugin(
    urls: list[str],
    model: str | None,
    prompts: list[str],
    responses: list[list[str]],
    k: int,
    max_tokens: int,
) -> dict[str, Any]:
    """(b) grm-plugin: every item at once through score_batch."""
    rm = make_rm(urls, k, model, max_tokens)
    proc = psutil.Process()
    load0 = os.getloadavg()[0]
    t, cpu = time.perf_counter(), time.process_time()
    results = rm.score_batch(prompts, responses)
    elapsed = time.perf_counter() - t
    judgments = len(prompts) * k
    failed = [i for i, r in enumerate(results) if r is None or r.failed]
    return {
        "items": len(prompts),
        "judgments": judgments,
        "seconds": elapsed,
        "judgments_per_s": judgments / elapsed,
        "answered": sum(1 for r in results if r is not None and not r.failed),
        "failed": len(failed),
        "lost": sum(1 for r in results if r is None),
        "valid_samples": sum(r.num_valid for r in results if r is not None),
        "client_cpu_ms_per_judgment": (time.process_time() - cpu) / judgments * 1e3,
        "client_rss_mib": proc.memory_info().rss / 2**20,
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "failures": sorted({r.error or "" for r in results if r is not None and r.failed})[:5],
    }


def ceiling(
    before: Any, after: Any, replicas: int, judgments: int, seconds: float
) -> dict[str, float]:
    """(c) from the capacity model, for the work (b) sent (server counters before/after)."""
    prefill = (after.prefill_tokens - before.prefill_tokens) / max(1, judgments)
    per_replica = CAPACITY.ceiling(prefill_tokens_per_sample=prefill)
    return {
        "judgments_per_s": per_replica * replicas,
        # decode saturates once decode_tps / decode_tps_per_seq sequences run (per replica)
        "mean_decode_batch_per_replica": (after.decode_job_s - before.decode_job_s)
        / seconds
        / replicas,
        "saturating_batch": CAPACITY.decode_capacity / CAPACITY.decode_tps_per_seq,
        # share of the time at least one sequence was decoding (per replica): idle time is
        # time the client left the server waiting
        "decode_busy_share": (after.decode_busy_s - before.decode_busy_s) / seconds / replicas,
        "prefill_tokens_per_judgment": prefill,
        "requests": after.requests - before.requests,
        "faults": {k: after.faults.get(k, 0) - before.faults.get(k, 0) for k in after.faults},
    }


def sim_config(replicas: int, faults: bool) -> dict[str, Any]:
    plan: dict[str, Any] = {"seed": 7}
    if faults:
        plan |= {
            "rates": {k.value: v for k, v in FAULT_RATES.items()},
            "hang_seconds": HANG_SECONDS,
            "spike_delay": 2.0,
            "retry_after": 1.0,
        }
    return {
        "capacity": CAPACITY.model_dump(),
        "faults": plan,
        "replicas": replicas,
        "max_lifetime": 3 * 3600,
        "max_requests": 5_000_000,
    }


def run_cells(
    urls: list[str],
    model: str | None,
    sizes: list[int],
    ks: list[int],
    max_tokens: int,
    stats: Any,
    replicas: int,
    capacity: float | None,
    label: str,
    server_cpu: Callable[[], float] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        prompts, responses = items(n)
        for k in ks:
            before = stats() if stats else None
            cpu0 = server_cpu() if server_cpu else None
            b = plugin(urls, model, prompts, responses, k, max_tokens)
            if server_cpu:
                b["server_cpu_cores"] = (server_cpu() - cpu0) / b["seconds"]
            row: dict[str, Any] = {"run": label, "replicas": replicas, "items": n, "k": k, "b": b}
            if stats:
                row["c"] = ceiling(before, stats(), replicas, b["judgments"], b["seconds"])
            elif capacity:
                row["c"] = {"judgments_per_s": capacity}
            rows.append(row)
            c = row.get("c", {}).get("judgments_per_s")
            print(
                f"[{label}] R={replicas} items={n} k={k}: b {b['judgments_per_s']:.1f} j/s"
                + (f", c {c:.1f} j/s, b/c {b['judgments_per_s'] / c:.3f}" if c else "")
                + f", answered {b['answered']}/{n}, cpu {b['client_cpu_ms_per_judgment']:.2f} "
                f"ms/j, rss {b['client_rss_mib']:.0f} MiB, load {b['load_avg_1m']}",
                flush=True,
            )
    return rows


def cpu_of(sim: SimServerProcess) -> Callable[[], float]:
    """The simulated server process's CPU seconds so far (its own cost, not the client's)."""
    assert sim.proc is not None
    proc = psutil.Process(sim.proc.pid)
    return lambda: sum(proc.cpu_times()[:2])


def first_model(url: str) -> str:
    return openai.OpenAI(base_url=url, api_key="EMPTY").models.list().data[0].id


def router_cells(
    cells: list[tuple[int, int]],
    policies: list[str],
    workloads: list[str],
    replicas: int,
    max_tokens: int,
) -> list[dict[str, Any]]:
    """Client-side balancing vs a router's policies, on fresh replicas per cell (cold caches)."""
    rows = []
    for workload in workloads:
        for n, k in cells:
            prompts, responses = WORKLOADS[workload](n)
            for policy in policies:
                with SimServerProcess(sim_config(replicas, faults=False)) as sim:
                    router = None
                    if policy != CLIENT_SIDE:
                        router = Router(
                            sim.urls, RouterConfig(policy=policy, max_lifetime=3600)
                        ).start()
                    try:
                        urls = sim.urls if router is None else [router.url]
                        assert router is None or router.proc is not None
                        router_proc = None if router is None else psutil.Process(router.proc.pid)
                        rcpu0 = sum(router_proc.cpu_times()[:2]) if router_proc else 0.0
                        scpu = cpu_of(sim)
                        scpu0 = scpu()
                        before = sim.stats()
                        b = plugin(urls, "sim-judge", prompts, responses, k, max_tokens)
                        after = sim.stats()
                        b["server_cpu_cores"] = (scpu() - scpu0) / b["seconds"]
                        if router_proc is not None:
                            rcpu = sum(router_proc.cpu_times()[:2]) - rcpu0
                            b["router_cpu_ms_per_judgment"] = rcpu / b["judgments"] * 1e3
                    finally:
                        if router is not None:
                            router.stop()
                c = ceiling(before, after, replicas, b["judgments"], b["seconds"])
                cached = after.cached_tokens - before.cached_tokens
                sent = cached + after.prefill_tokens - before.prefill_tokens
                c["prefix_hit_rate"] = cached / sent if sent else 0.0
                c["per_replica_requests"] = [
                    x - y for x, y in zip(after.per_replica, before.per_replica, strict=True)
                ]
                row = {
                    "run": "router",
                    "workload": workload,
                    "policy": policy,
                    "replicas": replicas,
                    "items": n,
                    "k": k,
                    "b": b,
                    "c": c,
                }
                rows.append(row)
                print(
                    f"[router] {workload} {policy} R={replicas} items={n} k={k}: "
                    f"b {b['judgments_per_s']:.1f} j/s, c {c['judgments_per_s']:.1f}, "
                    f"b/c {b['judgments_per_s'] / c['judgments_per_s']:.3f}, "
                    f"hit {c['prefix_hit_rate']:.3f}, split {c['per_replica_requests']}, "
                    f"answered {b['answered']}/{n}, load {b['load_avg_1m']}",
                    flush=True,
                )
    return rows


def router_md(report: dict[str, Any]) -> list[str]:
    """The router cells' table (empty when there are none)."""
    rows = [r for r in report["rows"] if r["run"] == "router"]
    if not rows:
        return []
    lines = [
        "## Router cells: client-side balancing vs a router",
        "",
        f"Router: {report.get('router', '-')}. `client` = no router: grm-plugin's own "
        "balancing over the replicas' URLs (least outstanding requests first). Fresh replicas "
        "(cold prefix caches) for every cell. *prefix hit* = prompt tokens the replicas found "
        "in their prefix cache / prompt tokens they were sent (the n samples of one request "
        "share one prefill and are not counted as hits); *prefill tok/j* = prompt tokens "
        "actually prefilled per judgment; *split* = chat requests each replica got.",
        "",
        "| workload | balancing | items | k | (b) j/s | (c) ceiling j/s | b/c | prefix hit | "
        "prefill tok/j | split | answered / items | failed | client CPU ms/j | "
        "router CPU ms/j | load 1m (start, end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, c = r["b"], r["c"]
        router_cpu = b.get("router_cpu_ms_per_judgment")
        lines.append(
            f"| {r['workload']} | {r['policy']} | {r['items']} | {r['k']} | "
            f"{b['judgments_per_s']:.1f} | {c['judgments_per_s']:.1f} | "
            f"{b['judgments_per_s'] / c['judgments_per_s']:.3f} | {c['prefix_hit_rate']:.3f} | "
            f"{c['prefill_tokens_per_judgment']:.0f} | "
            f"{' / '.join(str(x) for x in c['per_replica_requests'])} | "
            f"{b['answered']} / {r['items']} | {b['failed']} | "
            f"{b['client_cpu_ms_per_judgment']:.2f} | "
            + ("-" if router_cpu is None else f"{router_cpu:.2f}")
            + f" | {b['load_avg_1m'][0]}, {b['load_avg_1m'][1]} |"
        )
    return [*lines, ""]


def report_md(report: dict[str, Any]) -> str:
    if not report.get("naive"):  # --router-only
        return "\n".join(
            [
                "# At scale: grm-plugin's client-side balancing vs a router",
                "",
                f"Command: `{report['command']}`",
                "",
                f"Machine: {report['machine']}. Server: {report['server']}.",
                "",
                "(c) = the capacity model's saturated throughput for the work (b) sent, times "
                "the replicas. A judgment = one sampled judge output. What the cells mean for "
                "a fleet: docs/scale.md.",
                "",
                *router_md(report),
                "Notes:",
                "",
                *[f"- {n}" for n in report["notes"]],
                "",
            ]
        )
    return _report_md(report)


def _report_md(report: dict[str, Any]) -> str:
    naive_by_k = {r["k"]: r for r in report["naive"]}
    main_rows = [r for r in report["rows"] if r["run"] != "router"]
    lines = [
        "# At scale: naive loop vs grm-plugin vs the server's ceiling",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. Server: {report['server']}.",
        "",
        "Judgments per second (a judgment = one sampled judge output; an item with k samples is "
        "k judgments). (a) was measured on the first "
        f"{report['naive_items']} items for every k (it is sequential, so its rate does not "
        "depend on the number of items) and that rate is used for every size: **the (a) "
        "column for larger sizes is that prefix rate, not a run over all items**. "
        "(c) = the capacity model's saturated throughput for the work (b) sent.",
        "",
        "Client CPU: ms of the client process's CPU per judgment (plugin + openai client + "
        "HTTP); *CPU used* = cores the client actually got during (b); *1-core bound* = "
        "1000 / (ms per judgment), what the client could sustain on one core of its own; "
        "*server decode batch* = mean sequences decoding per replica during (b) (the decode "
        f"stage is saturated from {CAPACITY.decode_capacity / CAPACITY.decode_tps_per_seq:g} "
        "on: below that, the client did not keep the server fed); *server decode busy* = share "
        "of the time at least one sequence was decoding (the rest, the server waited for "
        "requests); *server CPU* = cores the simulated server process used.",
        "",
        "| run | replicas | items | k | (a) naive j/s [items measured] | (b) grm-plugin j/s | "
        "(c) ceiling j/s | b/a | b/c | answered / items | client CPU ms/j | CPU used (cores) | "
        "1-core bound j/s | server decode batch | server decode busy | server CPU (cores) | "
        "client RSS MiB | load 1m (start, end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main_rows:
        a = naive_by_k.get(r["k"])
        b = r["b"]
        c = r.get("c", {}).get("judgments_per_s")
        a_rate = a["judgments_per_s"] if a else None
        lines.append(
            f"| {r['run']} | {r['replicas']} | {r['items']} | {r['k']} | "
            + (f"{a_rate:.2f} [{a['items']}]" if a else "-")
            + f" | {b['judgments_per_s']:.1f} | "
            + (f"{c:.1f}" if c else "-")
            + " | "
            + (f"{b['judgments_per_s'] / a_rate:.1f}" if a_rate else "-")
            + " | "
            + (f"{b['judgments_per_s'] / c:.3f}" if c else "-")
            + f" | {b['answered']} / {r['items']} | {b['client_cpu_ms_per_judgment']:.2f} | "
            f"{b['client_cpu_ms_per_judgment'] * b['judgments_per_s'] / 1000:.2f} | "
            f"{1000 / b['client_cpu_ms_per_judgment']:.0f} | "
            + (
                f"{r['c']['mean_decode_batch_per_replica']:.1f}"
                if "mean_decode_batch_per_replica" in r.get("c", {})
                else "-"
            )
            + " | "
            + (
                f"{r['c']['decode_busy_share']:.2f}"
                if "decode_busy_share" in r.get("c", {})
                else "-"
            )
            + " | "
            + (f"{b['server_cpu_cores']:.2f}" if "server_cpu_cores" in b else "-")
            + f" | {b['client_rss_mib']:.0f} | {b['load_avg_1m'][0]}, {b['load_avg_1m'][1]} |"
        )
    lines += ["", "Targets at >= 512 items (b/a >= 5, b/c >= 0.9):", ""]
    for r in main_rows:
        a, c = naive_by_k.get(r["k"]), r.get("c", {}).get("judgments_per_s")
        if r["items"] < 512 or not a:
            continue
        ba = r["b"]["judgments_per_s"] / a["judgments_per_s"]
        bc = None if not c else r["b"]["judgments_per_s"] / c
        lines.append(
            f"- {r['run']}, {r['replicas']} replica(s), {r['items']} items, k={r['k']}: "
            f"b/a {ba:.1f} ({'met' if ba >= 5 else 'NOT met'})"
            + ("" if bc is None else f", b/c {bc:.2f} ({'met' if bc >= 0.9 else 'NOT met'})")
        )
    faulty = [r for r in report["rows"] if r["run"] == "faults 1%"]
    if faulty:
        lines += ["", "Faulty runs (1% of chat requests; counts from the server):", ""]
        for r in faulty:
            c = r["c"]
            lines.append(
                f"- {r['items']} items, k={r['k']}: {c['requests']} requests, faults "
                f"{json.dumps(c['faults'])}; answered {r['b']['answered']}/{r['items']}, "
                f"failed {r['b']['failed']}, lost {r['b']['lost']}."
            )
    lines += ["", *router_md(report)]
    lines += ["Notes:", "", *[f"- {n}" for n in report["notes"]], ""]
    if report.get("client_maxrss_mib"):
        lines.insert(
            -1, f"- client peak RSS (ru_maxrss), whole run: {report['client_maxrss_mib']:.0f} MiB"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", action="append", help="a real server's base URL (repeatable)")
    p.add_argument("--model", default=None, help="served model name (default: the first listed)")
    p.add_argument("--capacity", type=float, default=None, help="with --server: (c) in j/s")
    p.add_argument("--max-tokens", type=int, default=768, help="judgment length cap")
    p.add_argument("--sizes", default="64,512,2048,8192")
    p.add_argument("--ks", default="1,4,8")
    p.add_argument("--replica-sizes", default="2048", help="sizes of the 2/4-replica runs")
    p.add_argument("--fault-cells", default="2048x4,8192x1", help="ITEMSxK of the faulty runs")
    p.add_argument("--naive-items", type=int, default=64)
    p.add_argument("--router-cells", default="256x4", help="ITEMSxK of the router cells")
    p.add_argument(
        "--router-policies",
        default=f"{CLIENT_SIDE},round_robin,cache_aware,consistent_hash",
        help=f"'{CLIENT_SIDE}' (grm-plugin's own balancing) and vllm-router policies",
    )
    p.add_argument("--router-workloads", default=",".join(WORKLOADS))
    p.add_argument("--router-replicas", type=int, default=2)
    p.add_argument("--router-only", action="store_true", help="only the router cells")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "at_scale"))
    p.add_argument("--render", help="only re-write the markdown of this JSON report")
    p.add_argument(
        "--capacity-scale",
        type=float,
        default=1.0,
        help="multiply the simulated replica's token rates (e.g. 0.25: a 4x slower judge)",
    )
    args = p.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(report_md(report))
        return
    if args.quick:
        args.sizes, args.ks, args.replica_sizes = "64,256", "1,4", "256"
        args.fault_cells, args.naive_items, args.router_cells = "256x4", 8, "64x4"
    if args.capacity_scale != 1.0:
        global CAPACITY
        rates = ("prefill_tps", "prefill_tps_per_seq", "decode_tps", "decode_tps_per_seq")
        scaled = {k: getattr(CAPACITY, k) * args.capacity_scale for k in rates}
        CAPACITY = CAPACITY.model_copy(update=scaled)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    ks = [int(x) for x in args.ks.split(",")]
    t0 = time.time()
    report: dict[str, Any] = {
        "command": "python " + shlex.join(["benchmarks/at_scale.py", *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"Python {platform.python_version()}",
        "naive_items": args.naive_items,
        "capacity": CAPACITY.model_dump(),
        "rows": [],
        "notes": [],
    }
    naive_prompts, naive_responses = items(args.naive_items)
    cells = [tuple(int(x) for x in c.split("x")) for c in args.router_cells.split(",") if c]
    if args.server:  # a real fleet: the router is whatever the URLs are
        cells = []
    if cells and not router_available():
        report["notes"].append("router cells skipped: vllm-router is not installed")
        cells = []
    if cells:
        import vllm_router.version

        report["router"] = f"vllm-router {vllm_router.version.__version__}, own process"
    if args.router_only:
        report["server"] = (
            f"{args.router_replicas} replicas of the simulated server in its own process, per "
            f"replica: {CAPACITY.model_dump_json()}"
        )
    elif args.server:
        urls = args.server
        model = args.model or first_model(urls[0])
        report["server"] = f"{len(urls)} given server(s) {urls}, model {model}"
        report["naive"] = [
            {"k": k, **naive(urls[0], model, naive_prompts, naive_responses, k, args.max_tokens)}
            for k in ks
        ]
        report["rows"] += run_cells(
            urls, model, sizes, ks, args.max_tokens, None, len(urls), args.capacity, "main"
        )
    else:
        report["server"] = (
            "grm_plugin.testing simulated continuous-batching server in its own process, "
            f"per replica: {CAPACITY.model_dump_json()}; one request alone "
            f"{CAPACITY.single_latency(300) * 1e3:.0f} ms at 300 prompt tokens"
        )
        with SimServerProcess(sim_config(1, faults=False)) as sim:
            model = "sim-judge"
            report["naive"] = []
            for k in ks:
                a = naive(sim.urls[0], model, naive_prompts, naive_responses, k, args.max_tokens)
                report["naive"].append({"k": k, **a})
                print(f"[naive] k={k}: {a['judgments_per_s']:.2f} j/s on {a['items']} items")
            report["rows"] += run_cells(
                sim.urls,
                model,
                sizes,
                ks,
                args.max_tokens,
                sim.stats,
                1,
                None,
                "main",
                cpu_of(sim),
            )
        for replicas in (2, 4) if args.replica_sizes else ():
            with SimServerProcess(sim_config(replicas, faults=False)) as sim:
                report["rows"] += run_cells(
                    sim.urls,
                    model,
                    [int(x) for x in args.replica_sizes.split(",") if x],
                    ks,
                    args.max_tokens,
                    sim.stats,
                    replicas,
                    None,
                    "replicas",
                    cpu_of(sim),
                )
        for cell in [c for c in args.fault_cells.split(",") if c]:
            n, k = (int(x) for x in cell.split("x"))
            with SimServerProcess(sim_config(1, faults=True)) as sim:
                report["rows"] += run_cells(
                    sim.urls,
                    model,
                    [n],
                    [k],
                    args.max_tokens,
                    sim.stats,
                    1,
                    None,
                    "faults 1%",
                    cpu_of(sim),
                )
    if cells:
        report["rows"] += router_cells(
            cells,  # type: ignore[arg-type]
            [x for x in args.router_policies.split(",") if x],
            [x for x in args.router_workloads.split(",") if x],
            args.router_replicas,
            args.max_tokens,
        )
    report["seconds"] = time.time() - t0
    report["client_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["notes"].append(f"total wall time {report['seconds'] / 60:.1f} min")
    md = report_md(report)
    print(md)
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(md)
        print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
