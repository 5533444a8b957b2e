"""Accuracy against k (inference-time scaling) for plain voting and meta-RM voting.

All k levels come from one draw of ``max(ks)`` samples per item: level k uses the first k samples
of that draw, in the order the core drew their response orders (``draw_sequence``). Why that keeps
response orders balanced: for 2 responses the core shuffles the two orders once per item and then
alternates them (``reward.sample_orders``), so every even-length prefix holds each order exactly
k/2 times, and an odd prefix has one extra sample of an order that is random per item (balanced
over items). For n <= 6 responses it cycles through all permutations, so a prefix uses each order
at most once more than any other. k = 1 here is one temperature-sampled
judgment, not the greedy one the core uses when ``samples=1``.

Accuracy is strict: an item is right only when the best response's vote is strictly above
every other one; a tie, or an item where no sample parsed, is wrong. The tie and no-vote rates
are reported beside it, and ``accuracy_tie_broken`` (ties and no-vote items decided by a seeded
coin) only under that name.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.items import PreferenceItem
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> items = [PreferenceItem(id="a", prompt="Say hi", responses=["hi", "hello there"], best=1)]
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=4, seed=0, parse_retries=0)
    >>> report = evaluate(draw(rm, items, progress=False), ks=[1, 2, 4])
    >>> [p.accuracy for p in report.methods["voting"]]
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from .adaptive import AdaptiveRule, adaptive_samples
from .benchmark_data.readers import Overall
from .benchmark_data.scoring import headline
from .items import PreferenceItem
from .meta_rm import MetaRewardModel, rate_samples
from .meta_rm.data import MetaRMRecord, judge_items, records_from_result
from .results import FailureKind, JudgmentResult, Sample
from .reward import GenerativeRewardFn
from .voting import argmax_random_tie, select_by_meta, vote

METHODS = ("voting", "meta_rm_voting")
#: voting with each sample's expected scores (``Sample.vote_scores``) on the same samples
EXPECTED = "expected_voting"
#: one greedy judgment per item, from a separate draw (the paper's "greedy" row)
GREEDY = "greedy"
#: voting over the samples adaptive k would have used from the same draw
ADAPTIVE = "adaptive"


class ItemDraw(BaseModel):
    """One item with every sample the judge drew for it (saved as ``samples.jsonl``)."""

    item: PreferenceItem
    result: JudgmentResult
    output_tokens: list[int] = Field(
        default_factory=list, description="per sample: tokens the judge wrote (engine's count)"
    )


class PointStats(BaseModel):
    """Strict accuracy of one method at one k (a tie or an item with no parsed sample is
    wrong), with its binomial error bars, the tie and no-vote rates, and the tie-broken figure."""

    k: int
    n: int = Field(description="items evaluated")
    correct: int = Field(description="items whose best response got strictly the top vote")
    accuracy: float = Field(description="strict: ties and items with no parsed sample are wrong")
    se: float = Field(description="binomial standard error sqrt(p(1-p)/n)")
    ci95_low: float = Field(description="Wilson 95% interval")
    ci95_high: float
    tie_rate: float = Field(description="items whose top votes tied (wrong: strict accuracy)")
    no_vote_rate: float = Field(description="items with no parsed sample (wrong)")
    correct_tie_broken: int = Field(
        0, description="correct when ties and no-vote items are decided by a seeded coin"
    )
    accuracy_tie_broken: float = Field(
        0.0, description="accuracy with ties and no-vote items decided by a seeded coin"
    )
    acc_best_first: float | None = Field(
        description="strict accuracy on items whose best response is first in the data"
    )
    n_best_first: int
    acc_best_second: float | None = Field(
        description="strict accuracy on items whose best response is second (or later)"
    )
    n_best_second: int
    samples_used_per_item: float | None = Field(
        None, description="mean samples an item used (adaptive k; fixed k uses k)"
    )


class LevelStats(BaseModel):
    """Per k, independent of the method: how often samples failed to parse, and the cost."""

    k: int
    samples: int
    parse_failures: int
    parse_failure_rate: float
    output_tokens_per_item: float | None = Field(
        None, description="judge output tokens per item at this k (None: not counted)"
    )


class HeadlineStats(BaseModel):
    """A benchmark's headline number at one k (its own rule, e.g. RewardBench's sections)."""

    k: int
    accuracy: float
    rule: str
    parts: dict[str, float] = Field(default_factory=dict)


class EvalReport(BaseModel):
    """Everything ``grm-plugin eval`` measures; ``methods[name][i]`` belongs to ``ks[i]``."""

    ks: list[int]
    n_items: int
    seed: int
    keep_rule: str = "keep = max(1, k // 2) by meta score"
    methods: dict[str, list[PointStats]]
    levels: list[LevelStats]
    subsets: dict[str, dict[str, list[PointStats]]] = Field(
        default_factory=dict, description="subset -> method -> per k (items with a subset)"
    )
    headline: dict[str, list[HeadlineStats]] = Field(
        default_factory=dict, description="method -> per k: the benchmark's own overall rule"
    )
    benchmark: dict = Field(default_factory=dict)
    config: dict = Field(default_factory=dict)
    timing: dict[str, float] = Field(default_factory=dict)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sane at p = 0 or 1, unlike p +- 2 se).

    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of two judges on the same items: only the discordant items count."""

    n: int  #: items both judges have
    first_only: int  #: items only the first got right
    second_only: int  #: items only the second got right
    p: float  #: exact two-sided p-value


def mcnemar(first: dict[str, bool], second: dict[str, bool]) -> PairedTest:
    """Exact two-sided McNemar test on the ids both dicts have (id -> right?).

    Exact (binomial on the discordant pairs), because stage comparisons here have few of them.

    >>> mcnemar({"a": True, "b": True, "c": False}, {"a": False, "b": False, "c": False, "d": True})
    PairedTest(n=3, first_only=2, second_only=0, p=0.5)
    """
    ids = set(first) & set(second)
    a_only = sum(first[i] and not second[i] for i in ids)
    b_only = sum(second[i] and not first[i] for i in ids)
    m = a_only + b_only
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1)) / 2**m if m else 1.0
    return PairedTest(len(ids), a_only, b_only, min(1.0, 2 * tail))


def draw(
    rm: GenerativeRewardFn, items: Sequence[PreferenceItem], *, progress: bool = True
) -> list[ItemDraw]:
    """Judge every item once with ``rm`` (k = ``rm.sampling.samples``), keeping all samples."""
    results = judge_items(rm, items, progress=progress)
    return [ItemDraw(item=it, result=res) for it, res in zip(items, results, strict=True)]


def add_meta_scores(
    draws: Sequence[ItemDraw],
    meta_rm: MetaRewardModel,
    *,
    only_ids: set[str] | None = None,
    progress: bool = True,
) -> None:
    """Set ``meta_score`` on every valid sample (of the items in ``only_ids``, if given)."""
    todo = [d for d in draws if only_ids is None or d.item.id in only_ids]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="meta RM", unit="item")
    for d in todo:
        valid = [s for s in d.result.samples if s.scores is not None]
        if valid:
            rate_samples(meta_rm, d.item.prompt, d.item.responses, valid)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def draw_sequence(samples: Sequence[Sample]) -> list[Sample]:
    """First-round samples in the order the core drew their response orders.

    The core returns samples in that order; draws saved by earlier builds (such as the one in
    ``results/issue4``) came grouped by order (A, A, B, B) because the core sends one request per
    distinct order. Interleaving the groups round-robin, in their order of first appearance,
    restores the drawn sequence for enumerated permutations (n <= 6), is the identity on draws
    already in that order, and leaves random orders (distinct groups of one) as they are.
    """
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.order), []).append(s)
    out: list[Sample] = []
    queues = [list(g) for g in groups.values()]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def samples_at_k(samples: Sequence[Sample], k: int, parse_retries: int = 0) -> list[Sample]:
    """The samples that level k would have drawn: the first k first-round samples, plus (when the
    draw re-sampled parse failures) retry samples in draw order while level k still has failures
    to replace, each failure getting up to ``parse_retries`` replacement tries."""
    first = draw_sequence([s for s in samples if s.attempt == 0])[:k]
    retries = [s for s in samples if s.attempt > 0]
    pending = sum(1 for s in first if s.scores is None and s.failure_kind is FailureKind.PARSE)
    budget = pending * parse_retries
    out = list(first)
    for s in retries:
        if pending == 0 or budget == 0:
            break
        out.append(s)
        budget -= 1
        if s.scores is not None:
            pending -= 1
    return out


@dataclass(frozen=True)
class VoteOutcome:
    """One item at one level: strict and tie-broken correctness, and why it was undecided."""

    correct: bool
    correct_tie_broken: bool
    tied: bool
    no_vote: bool
    best: int


def _outcome(
    samples: Sequence[Sample], best: int, n: int, method: str, k: int, rng: random.Random
) -> VoteOutcome:
    valid = [s for s in samples if s.scores is not None]
    if method == "meta_rm_voting":
        valid = [s for s in valid if s.meta_score is not None]
        keep = max(1, k // 2)
        chosen = select_by_meta([s.meta_score for s in valid], min(keep, len(valid)))
        valid = [valid[i] for i in chosen]
    if not valid:
        return VoteOutcome(False, rng.randrange(n) == best, False, True, best)
    lists = [s.vote_scores() if method == EXPECTED else s.scores for s in valid]
    _, sums = vote(lists, n)  # type: ignore[arg-type]
    top = max(sums)
    tied = sums.count(top) > 1
    strict = sums[best] == top and not tied
    return VoteOutcome(strict, argmax_random_tie(sums, rng) == best, tied, False, best)


def _point(k: int, outcomes: list[VoteOutcome]) -> PointStats:
    n = len(outcomes)
    correct = sum(o.correct for o in outcomes)
    p = correct / n if n else 0.0
    lo, hi = wilson_interval(correct, n)
    first = [o.correct for o in outcomes if o.best == 0]
    second = [o.correct for o in outcomes if o.best != 0]
    broken = sum(o.correct_tie_broken for o in outcomes)
    return PointStats(
        k=k,
        n=n,
        correct=correct,
        accuracy=p,
        se=math.sqrt(p * (1 - p) / n) if n else 0.0,
        ci95_low=lo,
        ci95_high=hi,
        tie_rate=sum(o.tied for o in outcomes) / n if n else 0.0,
        no_vote_rate=sum(o.no_vote for o in outcomes) / n if n else 0.0,
        correct_tie_broken=broken,
        accuracy_tie_broken=broken / n if n else 0.0,
        acc_best_first=sum(first) / len(first) if first else None,
        n_best_first=len(first),
        acc_best_second=sum(second) / len(second) if second else None,
        n_best_second=len(second),
    )


def _outcomes(
    draws: Sequence[ItemDraw], chosen: Sequence[Sequence[Sample]], method: str, k: int, seed: int
) -> list[VoteOutcome]:
    out = []
    for d, c in zip(draws, chosen, strict=True):
        # no method in the seed: when both methods vote the same samples they pick alike
        rng = random.Random(f"{seed}|{k}|{d.item.id}")
        out.append(_outcome(c, d.item.best, len(d.item.responses), method, k, rng))
    return out


def item_outcomes(
    draws: Sequence[ItemDraw],
    k: int,
    *,
    method: str = "voting",
    seed: int = 0,
    parse_retries: int = 0,
) -> list[VoteOutcome]:
    """Per item, what ``evaluate`` counts at level ``k``: strict correctness (a tie or no vote
    is wrong), the seeded tie-broken coin, and why an item was undecided. For per-item files
    and paired tests between runs on the same items.

    Example:
        >>> from grm_plugin.items import PreferenceItem
        >>> from grm_plugin.results import JudgmentResult, Sample
        >>> item = PreferenceItem(id="a", prompt="2+2?", responses=["4", "5"], best=0)
        >>> tie = ItemDraw(item=item, result=JudgmentResult(samples=[Sample(scores=[7, 7])]))
        >>> [(o.correct, o.tied, o.no_vote) for o in item_outcomes([tie], 1)]
        [(False, True, False)]
    """
    chosen = [samples_at_k(d.result.samples, k, parse_retries) for d in draws]
    return _outcomes(draws, chosen, method, k, seed)


def _tokens_at(d: ItemDraw, chosen: Sequence[Sample]) -> int | None:
    if len(d.output_tokens) != len(d.result.samples):
        return None
    index = {id(s): i for i, s in enumerate(d.result.samples)}
    return sum(d.output_tokens[index[id(s)]] for s in chosen)


def evaluate(
    draws: Sequence[ItemDraw],
    ks: Sequence[int],
    *,
    seed: int = 0,
    parse_retries: int = 0,
    methods: Sequence[str] | None = None,
    greedy: Sequence[ItemDraw] | None = None,
    overall: Overall = Overall.MICRO,
    adaptive: AdaptiveRule | None = None,
) -> EvalReport:
    """Strict accuracy per k and method from one draw, overall and per subset: a tie, or an
    item with no valid sample, is wrong (``tie_rate`` and ``no_vote_rate`` say how often).
    ``accuracy_tie_broken`` decides those items with a coin seeded by (seed, k, item id):
    reproducible, the same item gets independent coin flips at different k, and both methods
    flip the same coin. Meta-RM voting is reported when every item has meta scores on its valid
    samples (see ``add_meta_scores``). ``greedy``: a separate draw of one greedy judgment per
    item, reported as the method ``greedy`` at k = 1. ``overall``: the benchmark's rule for its
    headline number (``headline``), besides the plain accuracy over items (``methods``).
    ``adaptive``: also the method ``adaptive`` (voting over the samples adaptive k would have
    used from the same draw; see ``grm_plugin.adaptive``), with its samples used per item.
    Expected-score voting (``expected_voting``) is reported on the same samples when every valid
    sample carries expected scores (a draw with ``sampling.expected_scores``)."""
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    for d in draws:
        first_round = sum(1 for s in d.result.samples if s.attempt == 0)
        if d.result.samples and first_round < ks[-1]:
            raise ValueError(f"item {d.item.id} has {first_round} samples, fewer than k={ks[-1]}")
    if methods is None:
        has_meta = all(
            s.meta_score is not None
            for d in draws
            for s in d.result.samples
            if s.scores is not None
        )
        methods = list(METHODS) if has_meta and draws else ["voting"]
        valid = [s for d in draws for s in d.result.samples if s.scores is not None]
        if valid and all(s.expected_scores is not None for s in valid):
            methods.append(EXPECTED)
    runs: list[tuple[str, int, Sequence[ItemDraw], list[list[Sample]]]] = []
    levels = []
    for k in ks:
        chosen = [samples_at_k(d.result.samples, k, parse_retries) for d in draws]
        n_samples = sum(len(c) for c in chosen)
        fails = sum(1 for c in chosen for s in c if s.scores is None)
        tokens = [_tokens_at(d, c) for d, c in zip(draws, chosen, strict=True)]
        levels.append(
            LevelStats(
                k=k,
                samples=n_samples,
                parse_failures=fails,
                parse_failure_rate=fails / n_samples if n_samples else 0.0,
                output_tokens_per_item=(
                    sum(t for t in tokens if t is not None) / len(tokens)
                    if tokens and all(t is not None for t in tokens)
                    else None
                ),
            )
        )
        runs += [(m, k, draws, chosen) for m in methods]
    if adaptive is not None:
        if adaptive.k_max > ks[-1]:
            raise ValueError(f"adaptive k_max={adaptive.k_max} exceeds the draw (k={ks[-1]})")
        chosen = [
            adaptive_samples(
                draw_sequence([s for s in d.result.samples if s.attempt == 0]), adaptive
            )
            for d in draws
        ]
        runs.append((ADAPTIVE, adaptive.k_max, draws, chosen))
    if greedy is not None:
        by_id = {g.item.id: g for g in greedy}
        missing = [d.item.id for d in draws if d.item.id not in by_id]
        if missing:
            raise ValueError(f"greedy draw lacks item {missing[0]}")
        g_draws = [by_id[d.item.id] for d in draws]
        runs.insert(0, (GREEDY, 1, g_draws, [list(g.result.samples[:1]) for g in g_draws]))
    per_method: dict[str, list[PointStats]] = {}
    subsets: dict[str, dict[str, list[PointStats]]] = {}
    names = sorted({d.item.subset for d in draws if d.item.subset is not None})
    headline_stats: dict[str, list[HeadlineStats]] = {}
    for method, k, ds, chosen in runs:
        vote_method = "voting" if method in (GREEDY, ADAPTIVE) else method
        outcomes = _outcomes(ds, chosen, vote_method, k, seed)
        point = _point(k, outcomes)
        point.samples_used_per_item = sum(len(c) for c in chosen) / len(chosen) if chosen else 0.0
        per_method.setdefault(method, []).append(point)
        acc: dict[str, tuple[float, int]] = {}
        for name in names:
            sub = [o for d, o in zip(ds, outcomes, strict=True) if d.item.subset == name]
            p = _point(k, sub)
            subsets.setdefault(name, {}).setdefault(method, []).append(p)
            acc[name] = (p.accuracy, p.n)
        if not names:
            p = per_method[method][-1]
            acc = {"all": (p.accuracy, p.n)}
        value, parts = headline(overall, acc)
        headline_stats.setdefault(method, []).append(
            HeadlineStats(k=k, accuracy=value, rule=overall.value, parts=parts)
        )
    return EvalReport(
        ks=ks,
        n_items=len(draws),
        seed=seed,
        methods=per_method,
        levels=levels,
        subsets=subsets,
        headline=headline_stats,
    )


def records_from_draws(draws: Sequence[ItemDraw]) -> list[MetaRMRecord]:
    """Meta-RM training records from the same samples the evaluation used."""
    return [r for d in draws for r in records_from_result(d.item, d.result)]


def write_draws(draws: Sequence[ItemDraw], path: str | Path) -> None:
    """Save every sample (JSONL, one item a line) so that a later run can reuse the draw."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as f:
        for d in draws:
            f.write(d.model_dump_json() + "\n")


def read_draws(path: str | Path) -> list[ItemDraw]:
    """Load a draw saved by ``write_draws``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"saved samples not found: {p}")
    with p.open() as f:
        return [ItemDraw.model_validate_json(line) for line in f if line.strip()]


_LABELS: dict[str, str] = {
    "voting": "voting",
    "meta_rm_voting": "meta RM voting",
    GREEDY: "greedy",
    ADAPTIVE: "adaptive k",
    EXPECTED: "expected-score voting",
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(report: EvalReport) -> str:
    """The report as markdown: strict accuracy in % with +- 1.96 se and the Wilson CI, the tie
    and no-vote rates, the tie-broken accuracy (labeled), the benchmark's headline number,
    per-subset accuracy, and cost per k."""
    lines = [
        "Accuracy is strict: a tie or an item with no parsed sample counts as wrong. "
        "The tie-broken column decides those items by a seeded coin (not a measurement).",
        "",
        "| method | k | n | accuracy % | ±1.96·SE | 95% CI (Wilson) | tie rate | no-vote rate "
        "| accuracy % (tie-broken) | acc. best shown 1st in data | acc. best 2nd "
        "| samples used per item |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, points in report.methods.items():
        for p in points:
            used = "–" if p.samples_used_per_item is None else f"{p.samples_used_per_item:.2f}"
            lines.append(
                f"| {_LABELS.get(method, method)} | {p.k} | {p.n} | {_pct(p.accuracy)} "
                f"| {100 * 1.96 * p.se:.1f} | [{_pct(p.ci95_low)}, {_pct(p.ci95_high)}] "
                f"| {_pct(p.tie_rate)} | {_pct(p.no_vote_rate)} "
                f"| {_pct(p.accuracy_tie_broken)} "
                f"| {_pct(p.acc_best_first)} (n={p.n_best_first}) "
                f"| {_pct(p.acc_best_second)} (n={p.n_best_second}) | {used} |"
            )
    if report.headline and any(h.parts or h.rule != "micro" for hs in report.headline.values()
                               for h in hs):  # fmt: skip
        rule = next(iter(report.headline.values()))[0].rule
        lines += ["", f"Headline ({rule}):", "", "| method | k | headline % | parts |",
                  "|---|---|---|---|"]  # fmt: skip
        for method, hs in report.headline.items():
            for h in hs:
                parts = ", ".join(f"{k} {_pct(v)}" for k, v in h.parts.items()) or "–"
                lines.append(
                    f"| {_LABELS.get(method, method)} | {h.k} | {_pct(h.accuracy)} | {parts} |"
                )
    if report.subsets:
        lines += [
            "",
            "| subset | method | k | n | accuracy % | 95% CI (Wilson) | tie rate | no-vote rate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, per_method in report.subsets.items():
            for method, points in per_method.items():
                for p in points:
                    lines.append(
                        f"| {name} | {_LABELS.get(method, method)} | {p.k} | {p.n} "
                        f"| {_pct(p.accuracy)} | [{_pct(p.ci95_low)}, {_pct(p.ci95_high)}] "
                        f"| {_pct(p.tie_rate)} | {_pct(p.no_vote_rate)} |"
                    )
    lines += [
        "",
        "| k | samples | parse failures | parse failure rate % | output tokens per item |",
        "|---|---|---|---|---|",
    ]
    for lv in report.levels:
        tokens = "–" if lv.output_tokens_per_item is None else f"{lv.output_tokens_per_item:.0f}"
        lines.append(
            f"| {lv.k} | {lv.samples} | {lv.parse_failures} "
            f"| {100 * lv.parse_failure_rate:.1f} | {tokens} |"
        )
    per_item = {k: v for k, v in report.timing.items() if k.endswith("_per_item")}
    if per_item:
        lines += [""] + [f"- {k.replace('_', ' ')}: {v:.1f} s" for k, v in per_item.items()]
    return "\n".join(lines) + "\n"


def plot_accuracy(report: EvalReport, path: str | Path, title: str | None = None) -> Path:
    """Accuracy (%) against k on a log2 axis, one line per method, Wilson 95% error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = {"voting": "o", "meta_rm_voting": "s", EXPECTED: "D"}
    for i, (method, points) in enumerate(report.methods.items()):
        ks = [p.k for p in points]
        acc = [100 * p.accuracy for p in points]
        err = [
            [100 * (p.accuracy - p.ci95_low) for p in points],
            [100 * (p.ci95_high - p.accuracy) for p in points],
        ]
        # a small horizontal offset keeps the two methods' error bars apart
        shifted = [k * (1 + 0.03 * (i - 0.5)) for k in ks]
        ax.errorbar(
            shifted,
            acc,
            yerr=err,
            marker=markers.get(method, "^"),
            capsize=3,
            label=_LABELS.get(method, method),
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(report.ks)
    ax.set_xticklabels([str(k) for k in report.ks])
    ax.axhline(50, color="grey", linestyle=":", linewidth=1, label="chance (2 responses)")
    ax.set_xlabel("k (sampled judgments per item)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"Accuracy vs k ({report.n_items} items, 95% CI)")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


#: what a user without matplotlib is told (the plot is optional, the report is not)
NO_PLOT_WARNING = (
    "matplotlib is not installed: the report is written without accuracy_vs_k.png "
    "(pip install 'grm-plugin[plot]' for the plot)"
)


def plot_available() -> bool:
    """True when matplotlib (the ``plot`` extra) can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def write_report(
    report: EvalReport, out_dir: str | Path, title: str | None = None, *, plot: bool | None = None
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``accuracy_vs_k.png`` into ``out_dir``.

    ``plot`` None: the plot when matplotlib is installed, else a one-line warning and no plot.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(report.model_dump_json(indent=2))
    paths["markdown"].write_text(markdown_table(report))
    if plot is None:
        plot = plot_available()
        if not plot:
            logging.getLogger(__name__).warning(NO_PLOT_WARNING)
    if plot:
        paths["plot"] = plot_accuracy(report, out / "accuracy_vs_k.png", title)
    return paths
