"""What the README's first command shows: how often the embedded judge ranks Paris first.

    python benchmarks/first_command_demo.py settings --runs 8 --out /tmp/demo_settings.json
    python benchmarks/first_command_demo.py cli --runs 8 --out /tmp/demo_cli.json

``settings``: one process loads the embedded judge once and judges the README's France question
``--runs`` times for each setting (k, temperature, shuffle) with seeds 0..runs-1 (a seed fixes
the response orders, the prompt's nonce and the judge's sampling; greedy k = 1 differs between
seeds only by the order the responses are shown in and by parse re-samples).
``cli``: the README's exact first command, ``--runs`` times as separate processes, unseeded, as a
user runs it (model cached), with the final scores read from its output.

An outcome is ``paris`` (Paris scored strictly higher), ``tie``, ``berlin`` or ``failed`` (no
valid judgment).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PROMPT = "What is the capital of France?"
RESPONSES = ["The capital of France is Paris.", "The capital of France is Berlin."]
README_COMMAND = ["grm-plugin", "score", "--prompt", PROMPT]
README_COMMAND += [a for r in RESPONSES for a in ("--response", r)]

#: (name, GenerativeRewardFn keyword arguments)
SETTINGS = {
    "k1-greedy": dict(samples=1),
    "k1-greedy-noshuffle": dict(samples=1, shuffle=False),
    "k4-t0.5": dict(samples=4, temperature=0.5),
    "k4-t0.3": dict(samples=4, temperature=0.3),
}


def outcome(scores: list[float | None] | None) -> str:
    if not scores or None in scores:
        return "failed"
    if scores[0] > scores[1]:
        return "paris"
    return "tie" if scores[0] == scores[1] else "berlin"


def run_settings(names: list[str], runs: int) -> list[dict]:
    from grm_plugin import GenerativeRewardFn
    from grm_plugin.config import DefaultEngineConfig
    from grm_plugin.engines import make_engine

    t = time.perf_counter()
    engine = make_engine(DefaultEngineConfig())
    print(f"loaded in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for name in names:
        for seed in range(runs):
            rm = GenerativeRewardFn(engine, seed=seed, **SETTINGS[name])
            t = time.perf_counter()
            res = rm.score(PROMPT, RESPONSES)
            row = dict(
                setting=name,
                seed=seed,
                seconds=round(time.perf_counter() - t, 1),
                scores=res.scores,
                outcome=outcome(res.scores),
                samples=[
                    dict(order=s.order, scores=s.scores, failure=s.failure, text=s.text)
                    for s in res.samples
                ],
            )
            rows.append(row)
            print(
                json.dumps(
                    {k: row[k] for k in ("setting", "seed", "seconds", "scores", "outcome")}
                ),
                file=sys.stderr,
                flush=True,
            )
    return rows


def run_cli(runs: int, extra: list[str]) -> list[dict]:
    rows = []
    for i in range(runs):
        t = time.perf_counter()
        done = subprocess.run(README_COMMAND + extra, capture_output=True, text=True)
        scores: list[float | None] = []
        for m in re.finditer(r"^response \d: (\S+)", done.stdout, re.M):
            scores.append(None if m.group(1) == "None" else float(m.group(1)))
        row = dict(
            run=i,
            seconds=round(time.perf_counter() - t, 1),
            exit_code=done.returncode,
            scores=scores,
            outcome=outcome(scores),
            load_1min=os.getloadavg()[0],
            stdout=done.stdout,
        )
        rows.append(row)
        print(
            json.dumps({k: row[k] for k in ("run", "seconds", "scores", "outcome")}),
            file=sys.stderr,
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["settings", "cli"])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    p.add_argument("--extra", default="", help="more flags for the cli command (cli mode)")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()
    if args.mode == "settings":
        rows = run_settings(args.settings.split(","), args.runs)
        key = "setting"
    else:
        rows = run_cli(args.runs, args.extra.split())
        key = "mode"
        for r in rows:
            r["mode"] = "cli " + args.extra
    tally = {}
    for r in rows:
        tally.setdefault(r[key], Counter())[r["outcome"]] += 1
    Path(args.out).write_text(json.dumps(dict(tally=tally, rows=rows), indent=2))
    for name, c in tally.items():
        print(f"{name}: {dict(c)}")


if __name__ == "__main__":
    main()
