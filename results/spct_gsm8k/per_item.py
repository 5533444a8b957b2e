"""Per-item results, the table, paired tests and the plot of the GSM8K SPCT experiment.

Reads the evaluation draws (``eval/<stage>/<shard>/samples.jsonl``, written by ``grm-plugin eval``)
of every stage that has them and writes:

- ``per_item.jsonl``: one line per held-out item, stage and k, ``{"id", "stage", "k", "correct"}``;
  ``correct`` is strict: the best response got strictly the highest vote (a tie, or an item with
  no parsed sample, is wrong). k = 1, 2, 4, 8 on the ``k8`` shards (voting over the first k
  samples of one draw of 8), k = 1 on every shard.
- ``summary.json`` / ``summary.md``: per stage and k, strict accuracy with a Wilson 95% interval,
  tie rate, no-vote rate, sample parse-failure rate, tie-broken accuracy (labeled as such),
  strict accuracy on the items with a vote (judging apart from writing a parsable score) and
  on the items where the vote picked one response (no tie: 50% is a coin);
  exact McNemar tests between stages on the same items; the preference items at k = 1.
- ``accuracy_vs_k.png``: strict accuracy against k, one line per stage, on the k8 items.

    python results/spct_gsm8k/per_item.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from grm_plugin.evaluation import (
    VoteOutcome,
    item_outcomes,
    mcnemar,
    read_draws,
    samples_at_k,
    wilson_interval,
)

HERE = Path(__file__).resolve().parent
STAGES = ("base", "rft", "rl")
# each stage's judge as the demo runs it (score grammar on), preference items only: not stages of
# the experiment but the check of whether the trained judge becomes the demo's default
DEMO_STAGES = ("base_grammar", "rft_grammar", "rl_grammar")
KS = (1, 2, 4, 8)


def stage_draws(root: Path, stage: str, prefix: str) -> list:
    draws = []
    for folder in sorted((root / "eval" / stage).glob(f"{prefix}*")):
        if (folder / "samples.jsonl").is_file():
            draws += read_draws(folder / "samples.jsonl")
    return draws


def main(root: Path = HERE) -> None:
    rows: list[dict] = []
    stats: dict[str, list[dict]] = {}
    correct: dict[tuple[str, int], dict[str, bool]] = {}
    preference: dict[str, dict[str, VoteOutcome]] = {}  # stage -> item id -> outcome at k = 1
    for stage in STAGES:
        for prefix, ks in (("heldout_k8", KS), ("heldout_k1", (1,))):
            draws = stage_draws(root, stage, prefix)
            for k in ks:
                # what grm-plugin eval counts: strict, ties and no-vote items wrong, the
                # tie-broken coin seeded by (seed 0, k, id) as in its report.json
                for d, o in zip(draws, item_outcomes(draws, k), strict=True):
                    chosen = samples_at_k(d.result.samples, k)
                    rows.append({"id": d.item.id, "stage": stage, "k": k, "correct": o.correct})
                    correct.setdefault((stage, k), {})[d.item.id] = o.correct
                    stats.setdefault(f"{stage}@{k}", []).append(
                        {
                            "correct": o.correct,
                            "tie_broken": o.correct_tie_broken,
                            "tied": o.tied,
                            "no_vote": o.no_vote,
                            "parse_failures": sum(s.scores is None for s in chosen),
                            "samples": len(chosen),
                        }
                    )
    for stage in STAGES + DEMO_STAGES:
        if pref := stage_draws(root, stage, "preference"):
            preference[stage] = {
                d.item.id: o for d, o in zip(pref, item_outcomes(pref, 1), strict=True)
            }
    (root / "per_item.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = []
    for key, outs in stats.items():
        stage, k = key.split("@")
        n, c = len(outs), sum(o["correct"] for o in outs)
        lo, hi = wilson_interval(c, n)
        table.append(
            {
                "stage": stage,
                "k": int(k),
                "n": n,
                "correct": c,
                "accuracy": c / n,
                "ci95": [lo, hi],
                "tie_rate": sum(o["tied"] for o in outs) / n,
                "no_vote_rate": sum(o["no_vote"] for o in outs) / n,
                "parse_failure_rate": sum(o["parse_failures"] for o in outs)
                / max(1, sum(o["samples"] for o in outs)),
                "tie_broken_accuracy": sum(o["tie_broken"] for o in outs) / n,
                # strict accuracy on the items with a vote: whether a stage judges better, apart
                # from whether it writes a parsable score (which dominates the base judge's misses)
                "accuracy_when_voted": c / voted
                if (voted := sum(not o["no_vote"] for o in outs))
                else None,
                # and on the items where the vote picked one response (no tie): 50% is a coin,
                # so a stage that only learned to write score lines stays near it
                "accuracy_when_decisive": c / decisive
                if (decisive := sum(not (o["no_vote"] or o["tied"]) for o in outs))
                else None,
                "decisive": decisive,
            }
        )
    tests = []
    for first, second in (("base", "rft"), ("base", "rl"), ("rft", "rl")):
        for k in KS:
            if (first, k) in correct and (second, k) in correct:
                tests.append(
                    {
                        "first": first,
                        "second": second,
                        "k": k,
                        **asdict(mcnemar(correct[first, k], correct[second, k])),
                    }
                )
    pref_correct = {s: {i: o.correct for i, o in v.items()} for s, v in preference.items()}
    pref_table = {
        s: {
            "n": len(v),
            "correct": sum(pref_correct[s].values()),
            "ci95": wilson_interval(sum(pref_correct[s].values()), len(v)),
            "tie_rate": sum(o.tied for o in v.values()) / len(v),
            "no_vote_rate": sum(o.no_vote for o in v.values()) / len(v),
            "decisive": sum(not (o.no_vote or o.tied) for o in v.values()),
        }
        for s, v in preference.items()
    }
    pref_tests = [
        {"first": a, "second": b, **asdict(mcnemar(pref_correct[a], pref_correct[b]))}
        for a, b in (
            ("base", "rft"),
            ("base", "rl"),
            ("base_grammar", "rft_grammar"),
            ("base_grammar", "rl_grammar"),
        )
        if a in preference and b in preference
    ]
    summary = {
        "table": table,
        "mcnemar": tests,
        "preference": pref_table,
        "preference_mcnemar": pref_tests,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "| stage | k | n | strict accuracy | 95% CI | ties | no vote | parse failures "
        "(samples) | tie-broken accuracy | strict accuracy when voted | accuracy when decisive "
        "(items) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['stage']} | {t['k']} | {t['n']} | {t['accuracy']:.1%} | "
            f"{t['ci95'][0]:.1%}-{t['ci95'][1]:.1%} | {t['tie_rate']:.1%} | "
            f"{t['no_vote_rate']:.1%} | {t['parse_failure_rate']:.1%} | "
            f"{t['tie_broken_accuracy']:.1%} | {_pct(t['accuracy_when_voted'])} | "
            f"{_pct(t['accuracy_when_decisive'])} ({t['decisive']}) |"
        )
    lines += [
        "",
        "| McNemar | k | items | first only | second only | exact p |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['first']} vs {t['second']} | {t['k']} | {t['n']} | {t['first_only']} | "
        f"{t['second_only']} | {t['p']:.4f} |"
        for t in tests
    ]
    if pref_table:
        lines += [
            "",
            "Preference items (human preference, k = 1; does math judging transfer?). "
            "`*_grammar`: the same judge as the demo runs it, score grammar on (the demo-default "
            "check; not a stage):",
            "",
            "| stage | n | strict accuracy | 95% CI | ties | no vote | accuracy when decisive "
            "(items) |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s} | {t['n']} | {t['correct'] / t['n']:.1%} | "
            f"{t['ci95'][0]:.1%}-{t['ci95'][1]:.1%} | {t['tie_rate']:.1%} | "
            f"{t['no_vote_rate']:.1%} | "
            f"{_pct(t['correct'] / t['decisive'] if t['decisive'] else None)} ({t['decisive']}) |"
            for s, t in pref_table.items()
        ]
        lines += [
            f"\nMcNemar on the preference items, {t['first']} vs {t['second']}: {t['n']} items, "
            f"first only {t['first_only']}, second only {t['second_only']}, exact p {t['p']:.4f}"
            for t in pref_tests
        ]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    plot(correct, root / "accuracy_vs_k.png")
    print("\n".join(lines))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def plot(correct: dict[tuple[str, int], dict[str, bool]], path: Path) -> None:
    """Strict accuracy against k on the k8 items (the same items at every k), per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for stage in STAGES:
        if (stage, 8) not in correct:
            continue
        ids = sorted(correct[stage, 8])
        acc, lo, hi = [], [], []
        for k in KS:
            c = sum(correct[stage, k][i] for i in ids)
            low, high = wilson_interval(c, len(ids))
            acc.append(c / len(ids))
            lo.append(acc[-1] - low)
            hi.append(high - acc[-1])
        ax.errorbar(KS, acc, yerr=[lo, hi], marker="o", capsize=3, label=f"{stage} (n={len(ids)})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_xlabel("k (judgments voted)")
    ax.set_ylabel("strict accuracy (95% CI)")
    ax.set_title("GSM8K held-out pairs: accuracy vs k")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
