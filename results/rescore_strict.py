"""Re-score every committed eval run strictly from its saved samples (issue 21, item 25).

Earlier builds of ``grm-plugin eval`` counted a tie, or an item where no sample parsed, as a
coin flip; the tables under results/ were written that way. This reads each run's saved
``samples.jsonl`` and its ``report.json`` (for k, seed and the methods it reported), evaluates
again with strict accuracy (a tie or no parsed sample is wrong), rewrites ``report.json``,
``report.md`` and the plot in place (benchmark, config and timing kept), and prints one table
of old (tie-broken) vs strict counts, saved as ``results/rescore_strict.txt``.

    python results/rescore_strict.py

results/issue4 saved no samples (its draw lived under .cache/), so it cannot be re-scored: for it
the table gives the upper bound its report allows (strict correct <= items neither tied nor
without a parsed sample).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grm_plugin.adaptive import AdaptiveRule
from grm_plugin.benchmark_data import Overall
from grm_plugin.evaluation import ADAPTIVE, EXPECTED, METHODS, evaluate, read_draws, write_report

ROOT = Path(__file__).resolve().parent
RUNS = [
    "spct/eval_before",
    "spct/eval_after",
    "expected_scores/eval",
    "expected_scores/int8_discarded/eval",
]


def rescore(run: Path) -> list[str]:
    old = json.loads((run / "report.json").read_text())
    sampling = old["config"]["judge"]["sampling"]
    draws = read_draws(run / "samples.jsonl")
    methods = [m for m in old["methods"] if m in (*METHODS, EXPECTED)]
    report = evaluate(
        draws,
        old["ks"],
        seed=old["seed"],
        parse_retries=sampling["parse_retries"],
        methods=methods,
        overall=Overall(old.get("benchmark", {}).get("overall_rule", "micro")),
        # the runs used --adaptive without --agreement
        adaptive=AdaptiveRule(k_max=max(old["ks"])) if ADAPTIVE in old["methods"] else None,
    )
    report.benchmark, report.config = old.get("benchmark", {}), old["config"]
    report.timing = old.get("timing", {})
    report.config["rescored_strict"] = "results/rescore_strict.py"
    rows = []
    for method, points in report.methods.items():
        before = {p["k"]: p for p in old["methods"][method]}
        for p in points:
            # the old report counted coin flips; a report this script already wrote keeps
            # them under correct_tie_broken (so a second run reproduces the same table)
            was = before[p.k].get("correct_tie_broken", before[p.k]["correct"])
            if was != p.correct_tie_broken:
                sys.exit(f"{run} {method} k={p.k}: tie-broken {p.correct_tie_broken} != {was}")
            rows.append(
                f"| {run.relative_to(ROOT)} | {method} | {p.k} | {was}/{p.n} "
                f"| {p.correct}/{p.n} | {100 * p.tie_rate:.0f}% | {100 * p.no_vote_rate:.0f}% |"
            )
    write_report(report, run, plot=True)
    return rows


def issue4_bounds() -> list[str]:
    old = json.loads((ROOT / "issue4" / "report.json").read_text())
    rows = []
    for method, points in old["methods"].items():
        for p in points:
            decided = round(p["n"] * (1 - p["tie_rate"] - p["no_vote_rate"]))
            rows.append(
                f"| issue4 (no samples saved) | {method} | {p['k']} | {p['correct']}/{p['n']} "
                f"| at most {min(decided, p['correct'])}/{p['n']} | {100 * p['tie_rate']:.0f}% "
                f"| {100 * p['no_vote_rate']:.0f}% |"
            )
    return rows


def main() -> None:
    lines = [
        "| run | method | k | reported (ties, no-vote: coin flip) | strict | tie rate "
        "| no-vote rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        lines += rescore(ROOT / name)
    lines += issue4_bounds()
    text = "\n".join(lines) + "\n"
    (ROOT / "rescore_strict.txt").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
