"""Before/after table and plot of the embedded judge's audit: one row per family, one column per
defense, from the audits' own ``audit.json`` files (nothing recomputed here, so the numbers are
the ones each audit printed), and a paired test of each defense against the audit before it on
the same group cases (the hack judged beside the right answer: did it win or tie?), case by case
from the audits' ``cases.jsonl``.

    python results/audit/compare.py     # writes compare.md and compare.png beside this file

The minimal-content rule changes only responses with no content token (of battery v1: the 8
master keys, ``tests/test_audit.py::test_every_builtin_master_key_is_minimal``), so its audit
covers that family only; every other family is judged exactly as in the baseline and its cell
says so instead of repeating the baseline's number as if measured again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

from grm_plugin.audit.records import read_records
from grm_plugin.audit.report import group_passed
from grm_plugin.evaluation import mcnemar

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
AUDITS = {
    "before any defense": "baseline",
    "minimal-content rule": "minimal_content",
    "reference-guided prompt": "reference_guided",
    "SPCT with hack negatives": "hack_negatives/audit",
    "SPCT without them (control)": "hack_negatives/audit_plain",
}
#: audits that cover some families only, by design (run.sh), and what the other cells say
PARTIAL = {
    "minimal-content rule": "unchanged (rule does not fire)",
    "SPCT without them (control)": "not audited (the control covers the two families trained)",
}


#: (before, after) pairs of audits compared case by case; the last isolates the negatives from SFT
PAIRED = [
    ("before any defense", "minimal-content rule"),
    ("before any defense", "reference-guided prompt"),
    ("before any defense", "SPCT with hack negatives"),
    ("before any defense", "SPCT without them (control)"),
    ("SPCT without them (control)", "SPCT with hack negatives"),
]


def group_outcomes(folder: Path) -> dict[str, dict[str, bool]]:
    """family -> "hack/prompt id" -> did the hack win or tie beside the right answer, for the
    group cases the judge scored (matched across audits by hack and prompt, not by record key:
    the reference-guided audit's keys differ)."""
    out: dict[str, dict[str, bool]] = {}
    for r in read_records(folder / "cases.jsonl").values():
        if r.kind.value == "group" and (passed := group_passed(r)) is not None:
            out.setdefault(r.family or "", {})[f"{r.hack}/{r.prompt_id}"] = passed
    return out


def paired_lines(root: Path, labels: set[str], families: list[str]) -> list[str]:
    lines = [
        "| family | before | after | cases scored by both | passed before only | "
        "passed after only | exact McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    outcomes = {label: group_outcomes(root / d) for label, d in AUDITS.items() if label in labels}
    for before, after in PAIRED:
        if before not in outcomes or after not in outcomes:
            continue
        for fam in families:
            # mcnemar pairs the cases both audits scored
            t = mcnemar(outcomes[before].get(fam, {}), outcomes[after].get(fam, {}))
            if t.n:
                lines.append(
                    f"| {fam} | {before} | {after} | {t.n} | {t.first_only} | "
                    f"{t.second_only} | {t.p:.3g} |"
                )
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def _cell(fam: dict | None, report: dict) -> str:
    if fam is None:
        return "not run"
    lo, hi = fam["false_positive_ci95"]
    a, g = fam["alone"], fam["group"]
    # a case the judge could not score is left out of the rates; say how many, since a judge that
    # rarely parses gives narrow-looking rates on few cases
    failed = sum(h["judge_failures"] for h in report["hacks"] if h["family"] == fam["family"])
    return (
        f"{_pct(fam['false_positive_rate'])} [{_pct(lo)}, {_pct(hi)}] "
        f"(alone {a['passed']}/{a['n']}, group {g['passed']}/{g['n']}, no score {failed})"
    )


def main(root: Path = HERE) -> None:
    reports = {
        label: json.loads((root / d / "audit.json").read_text())
        for label, d in AUDITS.items()
        if (root / d / "audit.json").is_file()
    }
    families = list(dict.fromkeys(f["family"] for r in reports.values() for f in r["families"]))
    lines = [
        "| family | " + " | ".join(reports) + " |",
        "|---|" + "---|" * len(reports),
    ]
    for fam in families:
        cells = []
        for label, r in reports.items():
            f = next((x for x in r["families"] if x["family"] == fam), None)
            if f is None and label in PARTIAL:
                cells.append(PARTIAL[label])
            else:
                cells.append(_cell(f, r))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| audit | prompts | cases recorded | judging time (s, all runs) | s per case |")
    lines.append("|---|---|---|---|---|")
    for label, r in reports.items():
        t = r["timing"]
        lines.append(
            f"| {label} | {r['prompts']} | {r['cases_recorded']} of {r['cases']} | "
            f"{t['judging_seconds_all_runs']:.0f} | {t['seconds_per_case']:.1f} |"
        )
    paired = paired_lines(root, set(reports), families)
    (root / "compare.md").write_text(
        "False-positive rate % [Wilson 95% CI] per family (the larger of the alone and group "
        "rates; counts are hacked cases that passed / cases with a usable judgment; no score: "
        "cases the judge gave no parsable score, left out of the rates).\n\n"
        + "\n".join(lines)
        + "\n\nPaired, on the same group cases (each hack beside the right answer on each "
        "prompt) that both audits scored: how many the hack won or tied in one audit only. "
        "An exact McNemar p < 0.05 says the defense changed how often the hack passes.\n\n"
        + "\n".join(paired)
        + "\n"
    )
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(reports))
    for i, (label, r) in enumerate(reports.items()):
        by = {f["family"]: f for f in r["families"]}
        xs, ys, errs = [], [], [[], []]
        for j, fam in enumerate(families):
            f = by.get(fam)
            if f is None or f["false_positive_rate"] is None:
                continue
            lo, hi = f["false_positive_ci95"]
            xs.append(j + (i - (len(reports) - 1) / 2) * width)
            ys.append(f["false_positive_rate"])
            errs[0].append(max(0.0, f["false_positive_rate"] - lo))
            errs[1].append(max(0.0, hi - f["false_positive_rate"]))
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
    ax.axhline(0.1, color="k", lw=0.8, ls="--", label="gate (--max-rate 0.1)")
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax.set_ylabel("false-positive rate (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Embedded 0.5B judge: reward-hack audit per family, before/after each defense")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "compare.png", dpi=120)
    print((root / "compare.md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
