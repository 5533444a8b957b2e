"""Plugin overhead: prompting, shuffling, parsing, voting and bookkeeping for N judgments, with an
instant engine, so the time measured is grm-plugin's own.

    python benchmarks/plugin_overhead.py --judgments 10000 [--out benchmarks/results/overhead.json]

Prints judgments/s of the plugin alone and, given --judge-seconds (a measured time per judgment
of a real judge), the overhead as a fraction of the judge's time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from grm_plugin import GenerativeRewardFn
from grm_plugin.engines import GenerationRequest, JudgeEngine
from grm_plugin.parsing import parse_judgment
from grm_plugin.voting import vote

JUDGMENT = (
    "Specific Criteria:\n1. Correctness (50%)\n2. Clarity (30%)\n3. Brevity (20%)\n"
    "Analysis:\nResponse 1 answers correctly and clearly. Response 2 makes an arithmetic error "
    "in the second step and is padded with repetition.\nFinal Scores: [[8, 3]]"
)


class InstantEngine(JudgeEngine):
    async def generate(self, request: GenerationRequest) -> list[str]:
        return [JUDGMENT] * request.n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judgments", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=8, help="k per item in the end-to-end run")
    ap.add_argument(
        "--judge-seconds",
        type=float,
        default=None,
        help="measured seconds per judgment of a real judge, for the ratio",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    n = args.judgments

    t = time.perf_counter()
    parsed = [parse_judgment(JUDGMENT, 2, quoted=["a response", "another one"]) for _ in range(n)]
    parse_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, args.samples):
        vote([p.scores for p in parsed[i : i + args.samples]], 2)
    vote_s = time.perf_counter() - t

    rm = GenerativeRewardFn(InstantEngine(), samples=args.samples, seed=0)
    items = n // args.samples
    prompt = "Explain why the sky is blue in two sentences. " * 4
    responses = [["Rayleigh scattering of sunlight by air molecules. " * 5, "Because it is. " * 3]]
    t = time.perf_counter()
    out = rm.score_batch([prompt] * items, responses * items)
    e2e_s = time.perf_counter() - t
    assert all(not r.failed for r in out)

    per_judgment = e2e_s / (items * args.samples)
    result = {
        "judgments": n,
        "parse_seconds": round(parse_s, 4),
        "vote_seconds": round(vote_s, 4),
        "parse_and_vote_seconds": round(parse_s + vote_s, 4),
        "end_to_end_items": items,
        "samples_per_item": args.samples,
        "end_to_end_seconds": round(e2e_s, 4),
        "plugin_us_per_judgment": round(per_judgment * 1e6, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if args.judge_seconds:
        result["judge_seconds_per_judgment"] = args.judge_seconds
        result["overhead_fraction_of_judge"] = per_judgment / args.judge_seconds
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
