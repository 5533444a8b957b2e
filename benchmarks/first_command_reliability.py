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

``--constrain-scores off,on`` runs the same seeded draws once per setting of the demo judge's
score grammar (``constrain_scores``; one model load each, one after the other) and puts them side
by side; the draws' first texts are the same in both (same seeds), only what happens to a score
line that does not parse differs. The default (``default``) is ``JudgeConfig()`` as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from first_command import FRANCE  # the README's question, one definition (run from benchmarks/)


def measure(draws: int, max_retries: int, adapter: str | None, constrain: str) -> list[dict]:
    """``draws`` seeded judgments of the France question with ``max_retries`` re-samples."""
    from grm_plugin.config import JudgeConfig
    from grm_plugin.reward import GenerativeRewardFn

    cfg = JudgeConfig()
    update: dict = {"adapter": adapter} if adapter else {}
    if constrain != "default":
        update["constrain_scores"] = constrain == "on"
    cfg.engine = cfg.engine.model_copy(update=update)
    cfg.sampling.parse_retries = max_retries
    cfg.sampling.seed = 0  # each call is the judge's next item: its own shuffle and seeds
    rm = GenerativeRewardFn.from_config(cfg)
    out = []
    for i in range(draws):
        started = time.perf_counter()
        res = rm.score(*FRANCE)
        seconds = time.perf_counter() - started
        parsed = [s.attempt for s in res.samples if s.failure is None]
        out.append(
            {
                "constrain_scores": constrain,
                "draw": i,
                "first_parsed_attempt": min(parsed) if parsed else None,
                "attempts": len(res.samples),
                "constrained": sum(s.constrained for s in res.samples),
                "dropped_lines": [s.dropped_line for s in res.samples if s.dropped_line],
                "seconds": round(seconds, 2),
                "scores": res.scores,
                "failure_kinds": [str(s.failure_kind) for s in res.samples if s.failure],
                "load": round(os.getloadavg()[0], 2),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def _failed(d: dict, r: int) -> bool:
    """Whether draw ``d`` gives no valid judgment with a budget of ``r`` re-samples."""
    return d["first_parsed_attempt"] is None or d["first_parsed_attempt"] > r


def budget_rows(draws: list[dict], max_retries: int) -> list[tuple[int, int, float]]:
    """Per budget r: (r, draws that fail, mean seconds per draw)."""
    rows = []
    for r in range(max_retries + 1):
        # a draw costs its attempts up to the first parse or the budget: per-attempt time is
        # the draw's mean (attempts of one draw cost alike: same prompt, same cap)
        cost = [
            d["seconds"]
            / d["attempts"]
            * (min(d["attempts"], r + 1) if _failed(d, r) else d["first_parsed_attempt"] + 1)
            for d in draws
        ]
        rows.append((r, sum(_failed(d, r) for d in draws), sum(cost) / len(cost)))
    return rows


def verdicts(draws: list[dict]) -> str:
    """How the parsed draws ranked Paris (first response) against Berlin."""
    parsed = [d["scores"] for d in draws if d["scores"] and None not in d["scores"]]
    paris = sum(p > b for p, b in parsed)
    berlin = sum(b > p for p, b in parsed)
    ties = len(parsed) - paris - berlin
    return f"{paris} Paris over Berlin, {berlin} Berlin over Paris, {ties} ties"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--adapter", help="a LoRA adapter on the embedded judge (e.g. a trained one)")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument(
        "--constrain-scores",
        default="default",
        help="comma-separated settings of the score grammar to compare: default, on, off",
    )
    ap.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/first_command_reliability")
    )
    args = ap.parse_args()

    from grm_plugin.config import JudgeConfig

    default_retries = JudgeConfig().sampling.parse_retries
    settings = args.constrain_scores.split(",")
    if not set(settings) <= {"default", "on", "off"}:
        ap.error("--constrain-scores takes default, on, off")
    runs = {c: measure(args.draws, args.max_retries, args.adapter, c) for c in settings}

    lines = [
        "# The README's first command: how often no sample parses, by parse-retry budget",
        "",
        f"Command: `python benchmarks/first_command_reliability.py --draws {args.draws} "
        f"--max-retries {args.max_retries} --constrain-scores {args.constrain_scores} "
        f"--out {args.out}" + (f" --adapter {args.adapter}`" if args.adapter else "`"),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared (1-minute load per draw "
        "in the JSON). Judge: the embedded 0.5B"
        + (f" with the adapter `{args.adapter}`" if args.adapter else "")
        + ", `JudgeConfig()` defaults but `constrain_scores` as named; each draw is the "
        "judge's next seeded item (seed 0), the same draws for every setting.",
        "",
        "| constrain_scores | parse_retries | draws with no valid judgment (exit 1) | share "
        f"| mean s per draw | time vs the first setting at {default_retries} (the default) |",
        "|---|---|---|---|---|---|",
    ]
    base = budget_rows(runs[settings[0]], args.max_retries)[default_retries][2]
    for c, draws in runs.items():
        for r, failed, mean_s in budget_rows(draws, args.max_retries):
            mark = " (default)" if r == default_retries else ""
            lines.append(
                f"| {c} | {r}{mark} | {failed} of {len(draws)} | {failed / len(draws):.0%} | "
                f"{mean_s:.1f} | {mean_s / base:.2f}x |"
            )
    lines.append("")
    for c, draws in runs.items():
        lines += [
            f"constrain_scores {c}: parsed draws' verdicts: {verdicts(draws)}; samples scored "
            f"under the grammar: {sum(d['constrained'] for d in draws)}.",
            "",
        ]
    lines += [
        "| constrain_scores | draw | first parsed attempt | attempts | s "
        "| scores (Paris, Berlin) |",
        "|---|---|---|---|---|---|",
    ]
    for c, draws in runs.items():
        for d in draws:
            lines.append(
                f"| {c} | {d['draw']} | {d['first_parsed_attempt']} | {d['attempts']} | "
                f"{d['seconds']} | {d['scores']} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps([d for draws in runs.values() for d in draws], indent=1) + "\n"
    )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
