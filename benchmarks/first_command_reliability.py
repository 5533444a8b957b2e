"""How often the README's first command ends with "no valid judgment", by parse-retry budget.

    python benchmarks/first_command_reliability.py --draws 12 --max-retries 8 \
        --out benchmarks/results/first_command_reliability

The first command judges the France question once with ``JudgeConfig()``'s defaults (k = 1,
greedy, then up to ``sampling.parse_retries`` = 2 re-samples at the retry temperature) and an
unseeded response shuffle, so its outcome is a draw: it exits 1 when no sample parses. Here the
same judge (the embedded 0.5B, default settings) judges the question ``--draws`` times, each as
its next seeded item (its own shuffle and sampling seeds), with ``--max-retries`` re-samples.
Re-samples come in rounds, one per failed parse, so a draw's first parsed attempt tells what every
smaller budget would have given: with budget r the draw fails when that attempt is past r (or
never came). The table puts the budgets side by side: failure rate and seconds per draw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from first_command import FRANCE  # the README's question, one definition (run from benchmarks/)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--adapter", help="a LoRA adapter on the embedded judge (e.g. a trained one)")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/first_command_reliability")
    )
    args = ap.parse_args()

    from grm_plugin.config import JudgeConfig
    from grm_plugin.reward import GenerativeRewardFn

    cfg = JudgeConfig()
    if args.adapter:
        cfg.engine = cfg.engine.model_copy(update={"adapter": args.adapter})
    default_retries = cfg.sampling.parse_retries
    cfg.sampling.parse_retries = args.max_retries
    cfg.sampling.seed = 0  # each call is the judge's next item: its own shuffle and seeds
    rm = GenerativeRewardFn.from_config(cfg)
    draws = []
    for i in range(args.draws):
        started = time.perf_counter()
        res = rm.score(*FRANCE)
        seconds = time.perf_counter() - started
        # seconds spent up to the end of each attempt: what a smaller budget would have cost
        parsed = [s.attempt for s in res.samples if s.failure is None]
        draws.append(
            {
                "draw": i,
                "first_parsed_attempt": min(parsed) if parsed else None,
                "attempts": len(res.samples),
                "seconds": round(seconds, 2),
                "scores": res.scores,
                "failure_kinds": [str(s.failure_kind) for s in res.samples if s.failure],
                "load": round(os.getloadavg()[0], 2),
            }
        )
        print(json.dumps(draws[-1]), flush=True)

    rows = []
    for r in range(args.max_retries + 1):
        failed = [
            d for d in draws if d["first_parsed_attempt"] is None or d["first_parsed_attempt"] > r
        ]
        # a draw costs its attempts up to the first parse or the budget: per-attempt time is
        # the draw's mean (attempts of one draw cost alike: same prompt, same cap)
        cost = [
            d["seconds"] / d["attempts"] * min(d["attempts"], r + 1)
            if d["first_parsed_attempt"] is None or d["first_parsed_attempt"] > r
            else d["seconds"] / d["attempts"] * (d["first_parsed_attempt"] + 1)
            for d in draws
        ]
        rows.append((r, len(failed), sum(cost) / len(cost)))
    base = next(row for row in rows if row[0] == default_retries)
    lines = [
        "# The README's first command: how often no sample parses, by parse-retry budget",
        "",
        f"Command: `python benchmarks/first_command_reliability.py --draws {args.draws} "
        f"--max-retries {args.max_retries} --out {args.out}"
        + (f" --adapter {args.adapter}`" if args.adapter else "`"),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared (1-minute load per draw "
        "in the JSON). Judge: the embedded 0.5B"
        + (f" with the adapter `{args.adapter}`" if args.adapter else "")
        + ", `JudgeConfig()` defaults; each draw is the "
        "judge's next seeded item (seed 0).",
        "",
        "| parse_retries | draws with no valid judgment (exit 1) | share | mean s per draw "
        f"| time vs {default_retries} (the default) |",
        "|---|---|---|---|---|",
    ]
    for r, failed, mean_s in rows:
        mark = " (default)" if r == default_retries else ""
        lines.append(
            f"| {r}{mark} | {failed} of {len(draws)} | {failed / len(draws):.0%} | "
            f"{mean_s:.1f} | {mean_s / base[2]:.2f}x |"
        )
    lines += ["", "| draw | first parsed attempt | attempts | s | scores (Paris, Berlin) |"]
    lines.append("|---|---|---|---|---|")
    for d in draws:
        lines.append(
            f"| {d['draw']} | {d['first_parsed_attempt']} | {d['attempts']} | {d['seconds']} | "
            f"{d['scores']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(draws, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[8 : 8 + args.max_retries + 1]))


if __name__ == "__main__":
    main()
