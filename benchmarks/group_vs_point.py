"""Agreement with the preference labels: groupwise (both responses in one judge prompt, as the
adapters' grouping sends a GRPO group) vs pointwise (each response judged alone).

Same judge, same items, side by side in one run; one greedy judgment per prompt (k = 1, the
adapters' default). An item is correct when its best response gets the strictly highest score;
ties and unparsable judgments count as wrong and are reported separately.

    python benchmarks/group_vs_point.py ../shared/data/preference_dev.jsonl --limit 10 \
        --config results/spct/judge_before.yaml     # writes benchmarks/results/group_vs_point.*
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from grm_plugin import GenerativeRewardFn
from grm_plugin.config import JudgeConfig
from grm_plugin.evaluation import wilson_interval
from grm_plugin.items import is_correct, load_preference_items


def _row(name: str, outcomes: list[tuple[bool, bool, bool]], seconds: float, calls: int) -> dict:
    n = len(outcomes)
    correct = sum(o[0] for o in outcomes)
    lo, hi = wilson_interval(correct, n)
    return {
        "method": name,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [lo, hi],
        "tie_rate": sum(o[1] for o in outcomes) / n if n else 0.0,
        "unparsed_rate": sum(o[2] for o in outcomes) / n if n else 0.0,
        "judge_calls": calls,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--config", help="judge YAML (default: the embedded judge)")
    ap.add_argument("--out", default="benchmarks/results/group_vs_point")
    args = ap.parse_args()

    cfg = JudgeConfig.load(args.config) if args.config else JudgeConfig()
    # k = 1 and no retries: what one training step pays per group with the adapters' defaults
    cfg.sampling = cfg.sampling.model_copy(update={"samples": 1, "parse_retries": 0})
    rm = GenerativeRewardFn.from_config(cfg)
    items = [it for it in load_preference_items(args.data) if len(it.responses) == 2]
    items = items[: args.limit]

    t0 = time.perf_counter()
    grouped = rm.score_batch([it.prompt for it in items], [it.responses for it in items])
    t_group = time.perf_counter() - t0
    group_out = [
        (is_correct(r.scores if not r.failed else None, it.best), _tied(r.scores), r.failed)
        for it, r in zip(items, grouped, strict=True)
    ]

    t0 = time.perf_counter()
    prompts = [it.prompt for it in items for _ in it.responses]
    alone = rm.score_batch(prompts, [[resp] for it in items for resp in it.responses])
    t_point = time.perf_counter() - t0
    point_out = []
    for i, it in enumerate(items):
        pair = alone[2 * i : 2 * i + 2]
        failed = any(r.failed for r in pair)
        scores = None if failed else [r.scores[0] for r in pair]
        point_out.append((is_correct(scores, it.best), _tied(scores), failed))

    rows = [
        _row("groupwise (one prompt, both responses)", group_out, t_group, len(items)),
        _row("pointwise (each response alone)", point_out, t_point, 2 * len(items)),
    ]
    both = sum(g[0] == p[0] for g, p in zip(group_out, point_out, strict=True))
    report = {
        "data": args.data,
        "config": args.config,
        "items": [it.id for it in items],
        "rows": rows,
        "same_verdict_share": both / len(items) if items else 0.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Groupwise vs pointwise agreement with the labels ({len(items)} pairs, k = 1)",
        "",
        f"Data: `{args.data}` (first {len(items)} two-response items); judge: "
        f"`{args.config or 'embedded default'}`. Greedy (one sample per prompt). Command: "
        f"`python {' '.join(sys.argv)}`",
        "",
        "| method | accuracy | 95% CI | ties | unparsed | judge calls | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['correct']}/{r['n']} = {r['accuracy']:.2f} | "
            f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | {r['tie_rate']:.2f} | "
            f"{r['unparsed_rate']:.2f} | {r['judge_calls']} | {r['seconds']:.0f} |"
        )
    lines += ["", f"Same verdict (both right or both wrong): {report['same_verdict_share']:.2f}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _tied(scores: list[float | None] | None) -> bool:
    if not scores or any(s is None for s in scores):
        return False
    return scores.count(max(scores)) > 1  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
