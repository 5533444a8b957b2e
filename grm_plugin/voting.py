"""Combine sampled judgments into final scores (the paper's voting); pick samples by meta RM."""

from __future__ import annotations

import random
from collections.abc import Sequence


def select_by_meta(meta_scores: Sequence[float | None], keep: int) -> list[int]:
    """Indices of the ``keep`` samples with the highest meta score (ties: the earlier sample)."""
    ranked = sorted(
        (i for i, s in enumerate(meta_scores) if s is not None),
        key=lambda i: (-float(meta_scores[i]), i),
    )
    return sorted(ranked[:keep])


def vote(score_lists: Sequence[Sequence[float]], n: int) -> tuple[list[float], list[float]]:
    """Return (mean, sum) per response over the given valid score lists."""
    if not score_lists:
        raise ValueError("vote needs at least one valid sample")
    sums = [0.0] * n
    for scores in score_lists:
        for i, s in enumerate(scores):
            sums[i] += s
    k = len(score_lists)
    return [s / k for s in sums], sums


def argmax_random_tie(values: Sequence[float], rng: random.Random) -> int:
    """Index of the best value; ties broken uniformly at random (as in the paper's evaluation)."""
    best = max(values)
    return rng.choice([i for i, v in enumerate(values) if v == best])
