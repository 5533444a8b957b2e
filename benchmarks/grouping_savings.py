"""Judgments per training step saved by grouping, dedup and the judgment cache.

A GRPO-like run (64 prompts x 8 samples per step, 8 steps = 2 epochs over 256 prompts) is
scored through the trl adapter (``GRMReward``, the same code a trainer calls) with a recording
judge double (``RuleJudgeEngine``: no model, it counts the judge prompts and the responses shown
in them). Every configuration scores the same batches, side by side in one run.

Assumed duplicate rates (there is no public measurement of exact-duplicate rates in GRPO
groups; these are stated assumptions, changeable by flag):

- ``--short-share`` (default 0.4) of the prompts are short-answer tasks (math, QA): each sample
  is one of 4 canonical answers drawn with probabilities 0.55/0.25/0.15/0.05 (policies that have
  converged on a task answer it the same way), so a group of 8 holds ~2.5 distinct responses;
- the other prompts are free-form: each sample is new text, except that with probability
  ``--copy-rate`` (default 0.05) it repeats an earlier sample of its group verbatim;
- epoch 2 revisits every prompt; a cache hit needs the same prompt and the same *set* of
  distinct responses (common for short-answer prompts once the policy has converged).

    python benchmarks/grouping_savings.py            # writes grouping_savings.* in a temp folder
    python benchmarks/grouping_savings.py --out benchmarks/results/grouping_savings  # the committed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from grm_plugin.adapters.trl import GRMReward
from grm_plugin.testing import RuleJudgeEngine, shown_responses

SHORT_ANSWER_WEIGHTS = (0.55, 0.25, 0.15, 0.05)


@dataclass(frozen=True)
class Setup:
    name: str
    group_size: int
    dedup: bool
    cache: bool


SETUPS = (
    Setup("pointwise", 1, dedup=False, cache=False),
    Setup("pointwise + cache", 1, dedup=True, cache=True),
    Setup("groups of 8", 8, dedup=False, cache=False),
    Setup("groups of 8 + dedup", 8, dedup=True, cache=False),
    Setup("groups of 8 + dedup + cache", 8, dedup=True, cache=True),
    Setup("groups of 4 + dedup + cache", 4, dedup=True, cache=True),
)


def make_steps(args: argparse.Namespace) -> list[tuple[list[str], list[str]]]:
    """(prompts, completions) per step; prompt i's samples are contiguous, as trl gives them."""
    rng = random.Random(args.seed)
    pool = [f"Prompt {i}: {'solve' if i % 5 < 2 else 'write about'} topic {i}" for i in range(256)]
    short = {p for p in pool if rng.random() < args.short_share}
    answers = {p: [f"answer {j} to {p}" for j in range(4)] for p in short}
    steps = []
    for epoch in range(args.epochs):
        order = pool[:]
        random.Random(args.seed + epoch).shuffle(order)
        for s in range(0, len(order), args.prompts):
            prompts, completions = [], []
            for p in order[s : s + args.prompts]:
                group: list[str] = []
                for k in range(args.samples):
                    if p in short:
                        text = rng.choices(answers[p], SHORT_ANSWER_WEIGHTS)[0]
                    elif group and rng.random() < args.copy_rate:
                        text = rng.choice(group)
                    else:
                        text = f"free text {epoch}-{k}-{rng.getrandbits(32):08x} about {p}"
                    group.append(text)
                prompts += [p] * args.samples
                completions += group
            steps.append((prompts, completions))
    return steps


async def run(setup: Setup, steps: list[tuple[list[str], list[str]]]) -> dict:
    engine = RuleJudgeEngine()
    config = {
        "engine": {"type": "default"},  # replaced by the recording double below
        "cache": {"dedup": setup.dedup, "max_items": 100_000 if setup.cache else 0},
    }
    reward = GRMReward(config, engine=engine, group_size=setup.group_size)
    per_step = []
    for prompts, completions in steps:
        before, shown_before = (
            len(engine.requests),
            sum(len(shown_responses(r)) for r in engine.requests),
        )
        rewards = await reward(prompts, completions)
        assert all(r is not None for r in rewards)
        per_step.append(
            {
                "judgments": len(engine.requests) - before,
                "responses_shown": sum(len(shown_responses(r)) for r in engine.requests)
                - shown_before,
            }
        )
    n = len(per_step)
    return {
        "setup": setup.name,
        "judgments_per_step": sum(s["judgments"] for s in per_step) / n,
        "responses_shown_per_step": sum(s["responses_shown"] for s in per_step) / n,
        "per_step": per_step,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--short-share", type=float, default=0.4)
    p.add_argument("--copy-rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    # not the committed results by default: a run with other flags must not overwrite them
    p.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "grm-plugin" / "grouping_savings"),
        help="path prefix of the .json and .md written (default: %(default)s)",
    )
    args = p.parse_args()

    steps = make_steps(args)
    distinct = [
        len({(pr, c) for pr, c in zip(prompts, comps, strict=True)}) for prompts, comps in steps
    ]
    started = time.monotonic()
    results = [asyncio.run(run(s, steps)) for s in tqdm(SETUPS, desc="setups")]
    base = results[0]["judgments_per_step"]
    base_shown = results[0]["responses_shown_per_step"]
    for r in results:
        r["judgments_vs_pointwise"] = r["judgments_per_step"] / base
        r["shown_vs_pointwise"] = r["responses_shown_per_step"] / base_shown
    report = {
        "command": shlex.join(["python", "benchmarks/grouping_savings.py", *sys.argv[1:]]),
        "assumptions": {
            "prompts_per_step": args.prompts,
            "samples_per_prompt": args.samples,
            "epochs": args.epochs,
            "steps": len(steps),
            "short_answer_share": args.short_share,
            "short_answer_weights": SHORT_ANSWER_WEIGHTS,
            "free_form_copy_rate": args.copy_rate,
            "seed": args.seed,
        },
        "distinct_samples_per_step": sum(distinct) / len(distinct),
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Judgments per training step: grouping, dedup, cache",
        "",
        f"`{report['command']}` (recording judge double, no model; {len(steps)} steps of "
        f"{args.prompts} prompts x {args.samples} samples, 2 epochs over 256 prompts).",
        f"Assumed: {args.short_share:.0%} short-answer prompts (4 canonical answers, weights "
        f"{SHORT_ANSWER_WEIGHTS}), free-form copies {args.copy_rate:.0%}; "
        f"{report['distinct_samples_per_step']:.0f} of {args.prompts * args.samples} samples per "
        "step are distinct (prompt, response) pairs.",
        "",
        "| setup | judge calls / step | vs pointwise | responses shown / step | vs pointwise |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['setup']} | {r['judgments_per_step']:.1f} | {r['judgments_vs_pointwise']:.3f} "
            f"| {r['responses_shown_per_step']:.1f} | {r['shown_vs_pointwise']:.3f} |"
        )
    lines += [
        "",
        "Judge calls are the requests sent (each is one prompt with its judgment; with k "
        "samples, k generations). Responses shown is how many responses those prompts carried "
        "(the prefill the judge reads). Epoch 1 (steps 1-4) can only gain from grouping and "
        "dedup; epoch 2 also from the cache (see per_step in the JSON).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
