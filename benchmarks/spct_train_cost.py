"""Seconds per training step and peak memory of `spct sft` and `spct rl` on the embedded 0.5B
judge, for a new user's defaults beside the settings that cut them, in one run (issue 17).

    python benchmarks/spct_train_cost.py --out benchmarks/results/spct_train_cost

Each case trains a few steps in its own process (so its peak RSS is its own: weights, optimizer
state, activations, and for full-weight RL the reference model) with one torch thread, on the
same records: SFT on `results/spct/rft.jsonl` (real judge records, ~2,500 characters each), RL
on the first items of `results/spct_gsm8k/train.jsonl` (GSM8K training pairs, never held out).
The first step also pays trl's warm-up, so the step time is the median of the later steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# name -> (stage, settings): every setting that differs is spelled out, so the cases do not move
# when a default does. The first case of a stage is the baseline of its ratios: what a new
# user got before LoRA became the default (full weights, trl's gradient checkpointing on).
LORA_SFT = {"r": 16, "alpha": 32, "dropout": 0.05}
LORA_RL = {"r": 8, "alpha": 16, "dropout": 0.05}
GC = {"gradient_checkpointing": True}
NO_GC = {"gradient_checkpointing": False}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sft: full weights, max_length 2048 (the old defaults)": ("sft", {"lora": None, **GC}),
    "sft: LoRA r16": ("sft", {"lora": LORA_SFT, **GC}),
    "sft: LoRA r16, max_length 1024": ("sft", {"lora": LORA_SFT, "max_length": 1024, **GC}),
    "sft: LoRA r16, max_length 1024, no grad. checkpointing": (
        "sft",
        {"lora": LORA_SFT, "max_length": 1024, **NO_GC},
    ),
    "sft: LoRA r16, no grad. checkpointing (the new defaults)": (
        "sft",
        {"lora": LORA_SFT, **NO_GC},
    ),
    "rl: full weights, 512 tokens (the old defaults)": ("rl", {"lora": None, **GC}),
    "rl: LoRA r8": ("rl", {"lora": LORA_RL, **GC}),
    "rl: LoRA r8, 256 tokens": ("rl", {"lora": LORA_RL, "max_completion_length": 256, **GC}),
    "rl: LoRA r8, no grad. checkpointing": ("rl", {"lora": LORA_RL, **NO_GC}),
}


def run_case(name: str, steps: int, records: Path, items: Path, work: Path) -> dict[str, Any]:
    """Train ``steps`` steps of case ``name`` in this process; its step times and peak RSS."""
    import torch
    from transformers import TrainerCallback

    from grm_plugin.spct import RLSettings, SFTSettings, read_items, read_rft_records
    from grm_plugin.spct.rl import train_rl
    from grm_plugin.spct.sft import train_sft

    torch.set_num_threads(1)
    stage, overrides = CASES[name]
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            ends.append(time.perf_counter())

    out = work / f"case-{list(CASES).index(name)}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if stage == "sft":
        settings = SFTSettings(max_steps=steps, **overrides)
        report = train_sft(
            read_rft_records(records), out, settings, progress=False, callbacks=[StepClock()]
        )
    else:
        settings = RLSettings(steps=steps, **overrides)
        report = train_rl(
            read_items(items, limit=steps)[0],
            out,
            settings,
            progress=False,
            callbacks=[StepClock()],
        )
    total = time.perf_counter() - started
    step_seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    later = step_seconds[1:] or step_seconds
    return {
        "case": name,
        "stage": stage,
        "steps": len(step_seconds),
        "step_seconds": [round(s, 1) for s in step_seconds],
        "median_step_seconds": round(statistics.median(later), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "wall_seconds": round(total, 1),
        "completion_tokens": [
            h.get("completions/mean_length") for h in report["log_history"] if "loss" in h
        ]
        if stage == "rl"
        else None,
    }


# how to read the committed numbers: the run shared the machine with a long experiment
READING = (
    "Run 2026-12-06 17:10-19:00 UTC on the 2-core machine while the SPCT experiment (a judge "
    "and a policy server) used it too: load average ~3 for the sft cases and full-weight rl, "
    "~5 for LoRA rl. Compare the sft rows with each other (same records, same load). An rl "
    "step's time follows the length of the group's judgments (sampled, so unequal across "
    "cases) and the load: compare the rl rows for memory."
)


def markdown(rows: list[dict[str, Any]]) -> str:
    commands = list(dict.fromkeys(r.get("command", "(not recorded)") for r in rows))
    lines = [
        "# `spct sft` / `spct rl` cost per step, embedded 0.5B judge, this CPU (one torch thread)",
        "",
        *(f"- `{c}`" for c in commands),
        "",
        READING,
        "",
        "| case | steps | s / step (median after the 1st) | x baseline | peak RSS GiB "
        "| x baseline |",
        "|---|---|---|---|---|---|",
    ]
    base: dict[str, dict[str, Any]] = {}
    for r in rows:
        if "failed" in r:
            why = "killed (SIGKILL: out of memory)" if r["failed"] == -9 else f"exit {r['failed']}"
            lines.append(f"| {r['case']} | - | {why} | - | - | - |")
            continue
        b = base.setdefault(r["stage"], r)
        lines.append(
            f"| {r['case']} | {r['steps']} | {r['median_step_seconds']} "
            f"| {r['median_step_seconds'] / b['median_step_seconds']:.2f} "
            f"| {r['peak_rss_gib']} | {r['peak_rss_gib'] / b['peak_rss_gib']:.2f} |"
        )
    lines += ["", "Step times (s), in order, and for rl the mean judgment tokens per step:", ""]
    lines += [
        f"- {r['case']}: {r['step_seconds']}"
        + (f", tokens {r['completion_tokens']}" if r.get("completion_tokens") else "")
        for r in rows
        if "failed" not in r
    ]
    lines += [f"- {r['case']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join([*lines, ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=Path, default=ROOT / "results/spct/rft.jsonl")
    p.add_argument("--items", type=Path, default=ROOT / "results/spct_gsm8k/train.jsonl")
    p.add_argument("--sft-steps", type=int, default=4)
    p.add_argument("--rl-steps", type=int, default=3)
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/spct_train_cost")
    p.add_argument("--markdown-only", action="store_true", help="rewrite OUT.md from OUT.json")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    p.add_argument("--work", type=Path, default=Path("/tmp/spct_train_cost"))
    args = p.parse_args()
    if args.case:
        steps = args.sft_steps if CASES[args.case][0] == "sft" else args.rl_steps
        print(json.dumps(run_case(args.case, steps, args.records, args.items, args.work)))
        return
    command = "python benchmarks/spct_train_cost.py " + shlex.join(sys.argv[1:])
    if args.markdown_only:
        rows = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(rows))
        return
    old = args.out.with_suffix(".json")
    kept = {r["case"]: r for r in json.loads(old.read_text())} if args.only and old.exists() else {}
    for name in args.only or CASES:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = [
            sys.executable,
            __file__,
            "--case",
            name,
            "--records",
            str(args.records),
            "--items",
            str(args.items),
            "--sft-steps",
            str(args.sft_steps),
            "--rl-steps",
            str(args.rl_steps),
            "--work",
            str(args.work),
        ]
        done = subprocess.run(child, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            kept[name] = json.loads(done.stdout.strip().splitlines()[-1])
        else:  # e.g. killed by the kernel for memory (-9): a result too, not a crash
            print(done.stderr[-3000:], file=sys.stderr)
            kept[name] = {"case": name, "stage": CASES[name][0], "failed": done.returncode}
        kept[name]["command"] = command  # rows merged from several --only runs keep their own
        print(json.dumps(kept[name]), flush=True)
        rows = [kept[c] for c in CASES if c in kept]
        old.write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
