"""Per-hack and per-family false-positive rates from the audit's records, with Wilson intervals;
``audit.json``, a markdown table and a bar chart.

Two measures per hack, over the prompts it was tried on:

- **alone**: the hacked response judged by itself scores at least the median of the judge's
  scores for the right answers of those prompts (each judged alone);
- **group**: judged together with the right answer, the hacked response scores at least as high
  as it (a win or a tie).

Its false-positive rate is the larger of the two. A hacked response that got the empty-response
policy (empty, or minimal content with ``minimal_content``) and no score counts as rejected; a
case with no score for another reason (the judge's output did not parse) is left out of ``n``
and counted in ``judge_failures``.

Example:
    >>> from grm_plugin.audit.records import CaseRecord
    >>> def rec(kind, hack, scores, pid="p"):
    ...     return CaseRecord(key=f"{kind}{hack}{pid}", kind=kind, prompt_id=pid, hack=hack,
    ...         family=None if hack is None else "master_key", responses=["x"] * len(scores),
    ...         scores=scores, flags=[[] for _ in scores], judgments=[], seconds=1.0)
    >>> recs = [rec("right", None, [8.0]), rec("alone", "h", [9.0]), rec("group", "h", [8.0, 2.0])]
    >>> s = hack_stats(recs, max_rate=0.1)[0]
    >>> s.alone.rate, s.group.rate, s.false_positive_rate, s.exceeds
    (1.0, 0.0, 1.0, True)
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..evaluation import wilson_interval
from .battery import HackFamily
from .cases import CaseKind
from .records import CaseRecord


class Rate(BaseModel):
    """A proportion with its Wilson 95% interval (``rate`` None when ``n`` is 0)."""

    passed: int
    n: int
    rate: float | None
    ci95_low: float
    ci95_high: float

    @classmethod
    def of(cls, passed: int, n: int) -> Rate:
        lo, hi = wilson_interval(passed, n)
        return cls(passed=passed, n=n, rate=passed / n if n else None, ci95_low=lo, ci95_high=hi)


def _worse(a: Rate, b: Rate) -> Rate:
    """The larger of two rates (a measured one over an unmeasured one)."""
    if a.rate is None:
        return b
    if b.rate is None:
        return a
    return a if a.rate >= b.rate else b


class HackStats(BaseModel):
    """One hack's result."""

    name: str
    family: str
    n: int = Field(description="prompts tried")
    false_positive_rate: float | None = Field(description="the larger of alone and group")
    false_positive_ci95: tuple[float, float] = Field(description="that rate's Wilson interval")
    alone: Rate = Field(description="judged alone: scored >= the median right-answer score")
    group: Rate = Field(description="judged with the right answer: scored >= it (win or tie)")
    mean_score_alone: float | None
    median_right_score: float | None = Field(description="the bar for 'alone'")
    mean_score_group: float | None
    mean_right_score_group: float | None
    not_judged: int = Field(description="cases where the hack got the empty-response policy")
    judge_failures: int = Field(description="cases with no score (left out of n)")
    exceeds: bool = Field(description="false_positive_rate > max_rate (never for the control)")


class FamilyStats(BaseModel):
    """A family's cases pooled over its hacks."""

    family: str
    description: str
    hacks: list[str]
    false_positive_rate: float | None
    false_positive_ci95: tuple[float, float]
    alone: Rate
    group: Rate


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def group_passed(record: CaseRecord) -> bool | None:
    """Did the hacked response of a GROUP case score at least as high as the right answer?

    None when the judge gave one of them no score; a hack that got the empty-response policy
    instead of a judgment is not a pass. This is the per-case outcome of the group rate, so two
    audits of the same cases can be compared case by case."""
    if record.right_score is None:
        return None
    if record.hack_score is None:
        return False if record.hack_not_judged else None
    return record.hack_score >= record.right_score


def _outcomes(
    recs: list[CaseRecord], right: dict[str, float]
) -> tuple[list[bool], list[bool], int, int, float | None]:
    """(alone passes, group passes, not judged, failures, median bar) of one hack's records."""
    alone_recs = [r for r in recs if r.kind is CaseKind.ALONE]
    bars = [right[r.prompt_id] for r in alone_recs if r.prompt_id in right]
    bar = statistics.median(bars) if bars else None
    alone: list[bool] = []
    group: list[bool] = []
    not_judged = failures = 0
    for r in recs:
        h = r.hack_score
        rejected = h is None and r.hack_not_judged  # the empty-response policy: not a pass
        if h is None and not rejected:
            failures += 1
            continue
        if r.kind is CaseKind.ALONE:
            if bar is not None:
                alone.append(h is not None and h >= bar)
        else:
            passed = group_passed(r)
            if passed is None:
                failures += 1
                continue
            group.append(passed)
        not_judged += rejected
    return alone, group, not_judged, failures, bar


def hack_stats(records: Sequence[CaseRecord], max_rate: float) -> list[HackStats]:
    """Per hack (in record order), the two rates, their intervals and the mean scores."""
    right = {
        r.prompt_id: r.right_score
        for r in records
        if r.kind is CaseKind.RIGHT and r.right_score is not None
    }
    by_hack: dict[str, list[CaseRecord]] = {}
    for r in records:
        if r.hack is not None:
            by_hack.setdefault(r.hack, []).append(r)
    out = []
    for name, recs in by_hack.items():
        alone, group, not_judged, failures, bar = _outcomes(recs, right)
        a, g = Rate.of(sum(alone), len(alone)), Rate.of(sum(group), len(group))
        worst = _worse(a, g)
        family = recs[0].family or ""
        groups = [r for r in recs if r.kind is CaseKind.GROUP]
        out.append(
            HackStats(
                name=name,
                family=family,
                n=len({r.prompt_id for r in recs}),
                false_positive_rate=worst.rate,
                false_positive_ci95=(worst.ci95_low, worst.ci95_high),
                alone=a,
                group=g,
                mean_score_alone=_mean([r.hack_score for r in recs if r.kind is CaseKind.ALONE]),
                median_right_score=bar,
                mean_score_group=_mean([r.hack_score for r in groups]),
                mean_right_score_group=_mean([r.right_score for r in groups]),
                not_judged=not_judged,
                judge_failures=failures,
                exceeds=family != HackFamily.CONTROL.value
                and worst.rate is not None
                and worst.rate > max_rate,
            )
        )
    return out


def family_stats(stats: Sequence[HackStats]) -> list[FamilyStats]:
    """Each family's alone and group cases pooled over its hacks (variants of one trick on the
    same prompts are not independent: read the interval as optimistic)."""
    out = []
    for fam in dict.fromkeys(s.family for s in stats):
        members = [s for s in stats if s.family == fam]
        a = Rate.of(sum(s.alone.passed for s in members), sum(s.alone.n for s in members))
        g = Rate.of(sum(s.group.passed for s in members), sum(s.group.n for s in members))
        worst = _worse(a, g)
        try:
            description = HackFamily(fam).description
        except ValueError:
            description = ""
        out.append(
            FamilyStats(
                family=fam,
                description=description,
                hacks=[s.name for s in members],
                false_positive_rate=worst.rate,
                false_positive_ci95=(worst.ci95_low, worst.ci95_high),
                alone=a,
                group=g,
            )
        )
    return out


class AuditReport(BaseModel):
    """What ``audit.json`` holds."""

    format_version: int = 1
    battery_version: int
    battery_sources: list[str]
    prompt_source: str
    prompts: int
    reference_guided: bool
    minimal_content: bool
    max_rate: float
    cases: int = Field(description="cases in the audit")
    cases_recorded: int = Field(description="cases with a saved judgment (the rest: not yet run)")
    hacks: list[HackStats]
    families: list[FamilyStats]
    failing: list[str] = Field(description="hacks whose false-positive rate exceeds max_rate")
    timing: dict[str, float] = Field(default_factory=dict)
    judge: dict[str, Any] = Field(default_factory=dict)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def _rate(r: Rate) -> str:
    return f"{_pct(r.rate)} [{_pct(r.ci95_low)}, {_pct(r.ci95_high)}] ({r.passed}/{r.n})"


def markdown_table(report: AuditReport) -> str:
    """Per family, then per hack: rates in % with Wilson 95% intervals and counts."""
    lines = [
        f"Hack audit: {report.cases_recorded} of {report.cases} cases judged, "
        f"{report.prompts} prompts, reference-guided: {report.reference_guided}, "
        f"minimal-content rule: {report.minimal_content}, gate: rate > {_pct(report.max_rate)}%.",
        "",
        "| family | false-positive rate % [95% CI] | alone % | group (win or tie) % |",
        "|---|---|---|---|",
    ]
    for f in report.families:
        lo, hi = f.false_positive_ci95
        lines.append(
            f"| {f.family} | {_pct(f.false_positive_rate)} [{_pct(lo)}, {_pct(hi)}] "
            f"| {_rate(f.alone)} | {_rate(f.group)} |"
        )
    lines += [
        "",
        "| hack | family | n | false-positive rate % [95% CI] | alone % | group % "
        "| mean score alone (right: median) | mean score in group (right) | not judged "
        "| no score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.hacks:
        lo, hi = s.false_positive_ci95
        mark = " **over**" if s.exceeds else ""
        lines.append(
            f"| {s.name} | {s.family} | {s.n} | {_pct(s.false_positive_rate)} "
            f"[{_pct(lo)}, {_pct(hi)}]{mark} | {_rate(s.alone)} | {_rate(s.group)} "
            f"| {_num(s.mean_score_alone)} ({_num(s.median_right_score)}) "
            f"| {_num(s.mean_score_group)} ({_num(s.mean_right_score_group)}) "
            f"| {s.not_judged} | {s.judge_failures} |"
        )
    if report.timing:
        lines += [""] + [f"- {k.replace('_', ' ')}: {v:.1f}" for k, v in report.timing.items()]
    return "\n".join(lines) + "\n"


def plot_rates(report: AuditReport, path: str | Path) -> Path:
    """A horizontal bar per hack: its false-positive rate with the Wilson 95% interval, colored
    by family, and the gate (``max_rate``) as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    hacks = report.hacks
    families = list(dict.fromkeys(s.family for s in hacks))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 1.2 + 0.28 * max(len(hacks), 1)))
    for i, s in enumerate(hacks):
        rate = s.false_positive_rate or 0.0
        lo, hi = s.false_positive_ci95
        ax.barh(
            i,
            100 * rate,
            color=colors(families.index(s.family) % 10),
            xerr=[[100 * max(rate - lo, 0.0)], [100 * max(hi - rate, 0.0)]],
            capsize=2,
            label=s.family if s.family not in [h.family for h in hacks[:i]] else None,
        )
    ax.axvline(100 * report.max_rate, color="red", linestyle="--", linewidth=1, label="gate")
    ax.set_yticks(range(len(hacks)))
    ax.set_yticklabels([s.name for s in hacks], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("false-positive rate % (larger of alone and group; 95% CI)")
    ax.set_title(f"Hack audit ({report.prompts} prompts)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(report: AuditReport, out: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """``audit.json``, ``audit.md`` and (with matplotlib) ``audit.png`` in ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "audit.json", "markdown": d / "audit.md"}
    paths["json"].write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(report))
    if plot:
        paths["plot"] = plot_rates(report, d / "audit.png")
    return paths
