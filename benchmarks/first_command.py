"""The README's first command, before and after the demo-judge speed levers, side by side.

    python benchmarks/first_command.py /work/shared/data/preference_dev.jsonl --items 20 \
        --cap-s 90 --out benchmarks/results/first_command

Two local judges run the same embedded model (Qwen2.5-Coder-0.5B) in one process, item by item
and alternating which goes first, so that both see the same machine load:

- before: the old behaviour (float32 weights, 768 new tokens, no loop stop, no score-line
  prefill; a failed parse is re-sampled up to 2 times),
- after: ``DefaultEngineConfig()``'s defaults (see grm_plugin/config.py).

Items are the ``--items`` shortest of the file (prompt + responses; the ids are written out).
Every item gets ``--cap-s`` seconds (``deadline.item``): on a slow, shared CPU the old behaviour
can take many minutes per item, and a judgment slower than the cap misses the target anyway;
an item cut by the cap counts as not parsed. Then the README's France question is judged by
each, and the README's exact first command is timed end to end (model cached).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

FRANCE = (
    "What is the capital of France?",
    ["The capital of France is Paris.", "The capital of France is Berlin."],
)
README_COMMAND = [
    "grm-plugin",
    "score",
    "--prompt",
    "What is the capital of France?",
    "--response",
    "The capital of France is Paris.",
    "--response",
    "The capital of France is Berlin.",
]


class Counting:
    """Counts an engine's requests (and the score-line prefills among them)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.requests = 0
        self.prefills = 0
        inner = engine.generate

        async def generate(request):
            self.requests += 1
            self.prefills += request.assistant_prefix is not None
            return await inner(request)

        engine.generate = generate


def judges(cap_s: float):
    import torch

    from grm_plugin import GenerativeRewardFn
    from grm_plugin.config import DefaultEngineConfig, TransformersEngineConfig
    from grm_plugin.default_judge import default_judge_path
    from grm_plugin.engines.transformers_engine import TransformersEngine

    torch.set_num_threads(os.cpu_count() or 1)
    gguf = str(default_judge_path())
    after_cfg = DefaultEngineConfig().transformers_config(gguf)
    before_cfg = TransformersEngineConfig(
        model=gguf,
        dtype="float32",
        quantize="none",
        max_new_tokens=None,
        stop_loops=False,
        score_prefill=False,
    )
    out = {}
    for name, cfg in [("before", before_cfg), ("after", after_cfg)]:
        t = time.perf_counter()
        engine = TransformersEngine(cfg)
        load_s = time.perf_counter() - t
        rm = GenerativeRewardFn(
            engine, samples=1, max_new_tokens=768, parse_retries=2, deadline={"item": cap_s}
        )
        out[name] = dict(rm=rm, counter=Counting(engine), load_s=load_s, config=cfg.model_dump())
    return out


def judge_one(j: dict, prompt, responses) -> dict:
    import torch

    torch.manual_seed(0)  # the re-samples of a failed parse draw at temperature 0.7
    c = j["counter"]
    r0, p0 = c.requests, c.prefills
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    res = j["rm"].score(prompt, responses)
    dt = time.perf_counter() - t
    tokens = sum(c.engine.count_tokens(s.text or "") for s in res.samples)
    return dict(
        seconds=round(dt, 2),
        parsed=not res.failed,
        failure_kind=None if res.failure_kind is None else res.failure_kind.value,
        scores=res.scores,
        samples=len(res.samples),
        requests=c.requests - r0,
        prefills=c.prefills - p0,
        prefill_fixed=sum(1 for s in res.samples if s.scores is not None) > 0
        and c.prefills - p0 > 0,
        generated_tokens=tokens,
        load_1min=round((load0 + os.getloadavg()[0]) / 2, 2),
        texts=[s.text for s in res.samples],
    )


def summary(rows: list[dict], key: str) -> dict:
    done = [r[key] for r in rows if key in r]
    secs = [r["seconds"] for r in done]
    if not done:
        return {}
    right = sum(
        1
        for r in rows
        if key in r
        and r[key]["parsed"]
        and None not in r[key]["scores"]
        and r[key]["scores"][r["best"]] > r[key]["scores"][1 - r["best"]]
    )
    return dict(
        items=len(done),
        parsed=sum(d["parsed"] for d in done),
        cut_by_cap=sum(d["failure_kind"] == "timeout" for d in done),
        right=right,
        median_s=round(statistics.median(secs), 1),
        mean_s=round(statistics.mean(secs), 1),
        max_s=round(max(secs), 1),
        under_30s=sum(s < 30 for s in secs),
        tokens_per_s=round(sum(d["generated_tokens"] for d in done) / max(sum(secs), 1e-9), 2),
        prefills=sum(d["prefills"] for d in done),
        requests=sum(d["requests"] for d in done),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--cap-s", type=float, default=90.0)
    ap.add_argument("--stop-after-s", type=float, default=None, help="start no item after this")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/first_command"))
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()

    items = [json.loads(line) for line in args.data.open()]

    def size(it) -> int:
        p = it["prompt"] if isinstance(it["prompt"], str) else json.dumps(it["prompt"])
        return len(p) + sum(len(r) for r in it["responses"])

    items = sorted(items, key=lambda it: (size(it), it["id"]))[: args.items]
    js = judges(args.cap_s)
    report: dict = dict(
        command=" ".join(sys.argv),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        cap_s=args.cap_s,
        ids=[it["id"] for it in items],
        load_s={k: round(v["load_s"], 1) for k, v in js.items()},
        configs={k: v["config"] for k, v in js.items()},
        rows=[],
    )

    def save() -> None:
        report["summary"] = {k: summary(report["rows"], k) for k in ("before", "after")}
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(render(report))

    from tqdm import tqdm

    # the README's example first, then the dev items
    france = dict(id="readme-france", best=0, prompt=FRANCE[0], responses=FRANCE[1])
    for n, it in enumerate(tqdm([france, *items], desc="items", unit="item")):
        if args.stop_after_s and time.perf_counter() - started > args.stop_after_s:
            break
        row = dict(id=it["id"], best=it["best"])
        for name in ("before", "after") if n % 2 == 0 else ("after", "before"):
            row[name] = judge_one(js[name], it["prompt"], it["responses"])
        if it is france:
            report["readme_item"] = row
        else:
            report["rows"].append(row)
        save()
        print(
            f"{it['id']}: before {row['before']['seconds']}s parsed={row['before']['parsed']} | "
            f"after {row['after']['seconds']}s parsed={row['after']['parsed']} | "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    for j in js.values():
        asyncio.run(j["rm"].aclose())
    del js
    gc.collect()
    if not args.skip_cli:
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.run(README_COMMAND, capture_output=True, text=True)
        report["readme_command"] = dict(
            command=" ".join(f'"{a}"' if " " in a else a for a in README_COMMAND),
            seconds=round(time.perf_counter() - t, 1),
            exit_code=proc.returncode,
            stdout=proc.stdout[-3000:],
            load_1min=round((load0 + os.getloadavg()[0]) / 2, 2),
        )
    save()
    print(render(report))


def render(report: dict) -> str:
    s = report["summary"]
    lines = [
        "# The README's first command: judging time before / after the demo-judge levers",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}, shared with other agents' jobs (load average in each "
        "row, 1-minute, mean of start and end of the judgment). Cap per item: "
        f"{report['cap_s']:g} s (`deadline.item`; an item cut by it counts as not parsed).",
        f"Model load: before {report['load_s']['before']} s, after {report['load_s']['after']} s "
        "(cached safetensors).",
        "",
        "| | before | after |",
        "|---|---|---|",
    ]
    for key, label in [
        ("items", "items judged"),
        ("parsed", "parsed (a score for both responses)"),
        ("cut_by_cap", "cut by the cap"),
        ("right", "best response scored strictly higher"),
        ("median_s", "median s / judgment"),
        ("mean_s", "mean s / judgment (capped)"),
        ("max_s", "max s"),
        ("under_30s", "judgments under 30 s"),
        ("tokens_per_s", "generated tokens / s"),
        ("requests", "engine requests"),
        ("prefills", "score-line prefills"),
    ]:
        lines.append(f"| {label} | {s['before'].get(key, '-')} | {s['after'].get(key, '-')} |")
    rows = report["rows"]
    if s["before"] and s["after"]:
        ratio = s["before"]["mean_s"] / max(s["after"]["mean_s"], 1e-9)
        lines += ["", f"Mean time ratio before / after: {ratio:.2f}x (same items, same run)."]
    lines += ["", "Dev item ids: " + ", ".join(r["id"] for r in rows), ""]
    ri = report.get("readme_item")
    if ri:
        lines.append(
            "README's France question, in-process judging step: "
            f"before {ri['before']['seconds']} s (parsed {ri['before']['parsed']}, scores "
            f"{ri['before']['scores']}), after {ri['after']['seconds']} s (parsed "
            f"{ri['after']['parsed']}, scores {ri['after']['scores']})."
        )
    rc = report.get("readme_command")
    if rc:
        lines += [
            "",
            f"README's exact first command end to end (model cached): {rc['seconds']} s, exit "
            f"code {rc['exit_code']}, load {rc['load_1min']}:",
            "",
            f"    {rc['command']}",
        ]
    lines += [
        "",
        "| id | before s | before parsed | after s | after parsed | after prefills | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['id']} | {b['seconds']} | {b['parsed']} | {a['seconds']} | {a['parsed']} | "
            f"{a['prefills']} | {a['load_1min']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
