"""Adaptive k, measured on a saved draw: take the samples in the order they were drawn, in rounds,
and stop once the leader cannot be overtaken by the samples left (each can move the gap by at
most 9 points on the 1-10 scale), or once the last ``agreement`` valid samples all named the same
strict winner. The evaluation reports its accuracy and the samples it used next to fixed k on
the same draw (``evaluation.evaluate(..., adaptive=AdaptiveRule(...))``).

This is the stopping rule only; the core still draws all k samples. A live version would call
``should_stop`` between rounds of requests.

Example:
    >>> from grm_plugin.results import Sample
    >>> s = [Sample(scores=[9.0, 1.0], order=[0, 1]) for _ in range(4)]
    >>> len(adaptive_samples(s, AdaptiveRule(k_max=4)))  # gap 16 <= 2 x 9 left, then 24 > 9
    3
    >>> len(adaptive_samples(s, AdaptiveRule(k_max=4, agreement=2)))
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .parsing import SCORE_MAX, SCORE_MIN
from .results import Sample


@dataclass(frozen=True)
class AdaptiveRule:
    """Stop drawing early. ``k_max``: the most samples; ``round_size``: samples per round;
    ``agreement``: also stop when this many valid samples in a row agree on a strict winner."""

    k_max: int
    round_size: int = 1
    agreement: int | None = None

    def __post_init__(self) -> None:
        if self.k_max < 1 or self.round_size < 1 or (self.agreement or 1) < 1:
            raise ValueError("k_max, round_size and agreement must be positive")


def _winner(scores: Sequence[float]) -> int | None:
    best = max(scores)
    return scores.index(best) if list(scores).count(best) == 1 else None


def should_stop(used: Sequence[Sample], rule: AdaptiveRule) -> bool:
    """True when the samples drawn so far settle the item under ``rule``."""
    remaining = rule.k_max - len(used)
    if remaining <= 0:
        return True
    valid = [s.scores for s in used if s.scores is not None]
    if not valid:
        return False
    sums = [sum(col) for col in zip(*valid, strict=True)]
    ranked = sorted(sums, reverse=True)
    gap = ranked[0] - ranked[1] if len(ranked) > 1 else float("inf")
    if gap > (SCORE_MAX - SCORE_MIN) * remaining:
        return True
    if rule.agreement and len(valid) >= rule.agreement:
        winners = {_winner(v) for v in valid[-rule.agreement :]}
        return len(winners) == 1 and None not in winners
    return False


def adaptive_samples(drawn: Sequence[Sample], rule: AdaptiveRule) -> list[Sample]:
    """The prefix of ``drawn`` (first-round samples in draw order) that adaptive k would use."""
    used: list[Sample] = []
    for start in range(0, min(rule.k_max, len(drawn)), rule.round_size):
        used += list(drawn[start : min(start + rule.round_size, rule.k_max)])
        if should_stop(used, rule):
            break
    return used
