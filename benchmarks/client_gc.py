"""Where the client's CPU above a bare client goes at large batches: the garbage collector,
per generation, for a bare aiohttp client, grm-plugin's engine alone and the whole reward, on
the same requests to the same simulated server, side by side in one run.

    python benchmarks/client_gc.py --sizes 2048 8192 --out benchmarks/results/client_gc

Each result a batch returns is ~16 tracked objects (two pydantic models, their ``__dict__`` and
fields-set, the score, flag and sample lists) that live until the batch returns: the bare client
keeps one list of strings per item. Every object that outlives the young generations is walked
again by each older collection, so the collector's share grows with the batch. This script
measures that share (``gc.callbacks``: time between each collection's start and stop) and how
many tracked objects one result keeps, and reruns the reward with its results dropped as they
land (not what a caller gets: the cost of keeping them, measured).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import enum
import gc
import json
import platform
import time
import types
from pathlib import Path
from typing import Any

from client_floor import CONCURRENCY, FAST, bare_client, engine_only, grm_client, items

import grm_plugin.reward as reward_module
from grm_plugin import GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.testing.sim_server import SimServerProcess


class CollectorClock:
    """Collections and seconds per generation while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = collections.Counter()
        self.seconds = collections.Counter()
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._start

    def __enter__(self) -> CollectorClock:
        gc.collect()
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def tracked_per_result(results: list[Any]) -> float:
    """Tracked objects each result keeps: reachable from it, stopping at shared objects (classes,
    modules, functions, enum members), which every result points to and none owns."""
    shared = (type, types.ModuleType, types.FunctionType, enum.Enum)
    seen: set[int] = set()
    todo = list(results)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not gc.is_tracked(obj) or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        todo += gc.get_referents(obj)
    return len(seen) / len(results)


def run(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    with SimServerProcess({"capacity": FAST, "max_lifetime": 3600}) as server:
        url = server.urls[0]
        cfg = OpenAIEngineConfig(base_url=url, model="sim-judge", concurrency=CONCURRENCY)
        rm = GenerativeRewardFn(cfg, samples=1, shuffle=False, deadline={"batch": 600})

        async def dropped(p: list[str], r: list[list[str]]) -> float:
            # each result replaced by the first as it lands: nothing kept but one
            real = reward_module._unless_batch_timeout
            first: list[Any] = []

            def keep_one(res: Any, batch: Any) -> Any:
                first[:] = first or [res]
                return first[0]

            reward_module._unless_batch_timeout = keep_one  # type: ignore[assignment]
            try:
                return await grm_client(rm, p, r)
            finally:
                reward_module._unless_batch_timeout = real

        async def main() -> None:
            p, r = items(64, "warm")
            await grm_client(rm, p, r)
            kept = await rm.ascore_batch(p, r)
            per_result = tracked_per_result(kept)
            del kept
            for size in sizes:
                p, r = items(size, f"gc-{size}")
                msgs = [rm.judge_messages(a, b, [0, 1]) for a, b in zip(p, r, strict=True)]
                paths = [
                    ("bare aiohttp", bare_client, (url, "sim-judge", msgs, 1)),
                    ("engine", engine_only, (rm, msgs, 1)),
                    ("reward", grm_client, (rm, p, r)),
                    ("reward, results dropped", dropped, (p, r)),
                ]
                for name, path, args in paths:
                    with CollectorClock() as clock:
                        cpu = await path(*args)
                    row = {
                        "items": size,
                        "path": name,
                        "cpu_ms_per_item": 1000 * cpu / size,
                        "gc_ms_per_item": 1000 * sum(clock.seconds.values()) / size,
                        "collections": {str(g): clock.count[g] for g in (0, 1, 2)},
                        "gc_ms_per_item_by_generation": {
                            str(g): 1000 * clock.seconds[g] / size for g in (0, 1, 2)
                        },
                        "tracked_objects_per_result": per_result,
                    }
                    print(
                        f"items={size:5d} {name:24s} cpu {row['cpu_ms_per_item']:.3f} ms  "
                        f"gc {row['gc_ms_per_item']:.3f} ms  collections {row['collections']}",
                        flush=True,
                    )
                    rows.append(row)
            await rm.aclose()

        asyncio.run(main())
    return rows


def write(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    meta = {"command": command, "python": platform.python_version()}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# The garbage collector's share of the client's CPU (k = 1)",
        "",
        f"`{command}` (Python {meta['python']}, a shared 2-core machine; the paths run back to "
        "back in one process, on the same requests). A result keeps "
        f"{rows[0]['tracked_objects_per_result']:.0f} tracked objects.",
        "",
        "| items | path | CPU ms / item | GC ms / item | gen 0 / 1 / 2 collections "
        "| GC ms / item by generation 0 / 1 / 2 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, g = r["collections"], r["gc_ms_per_item_by_generation"]
        lines.append(
            f"| {r['items']} | {r['path']} | {r['cpu_ms_per_item']:.3f} "
            f"| {r['gc_ms_per_item']:.3f} | {c['0']} / {c['1']} / {c['2']} "
            f"| {g['0']:.3f} / {g['1']:.3f} / {g['2']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = run(args.sizes)
    if args.out:
        sizes = " ".join(map(str, args.sizes))
        write(rows, args.out, f"python benchmarks/client_gc.py --sizes {sizes} --out {args.out}")


if __name__ == "__main__":
    main()
