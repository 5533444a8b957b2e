"""Expected scores: each score read as the judge's distribution over 1..10, not the one it drew.

A judge that writes "7" may have put 40% on "6". With k samples, integer scores tie often (and
a tie gives GRPO no advantage); the expected score under the judge's own distribution at each
score position breaks most ties with information the judge already had.

How a distribution is measured (``ScoreDistribution.from_candidates``): each candidate value is
written as text after the judgment's prefix and tokenized with it; the continuations after
their common token prefix are scored by the model (teacher forcing). A value whose tokens are a
prefix of another's ("1" of "10" with digit-by-digit tokenizers) gets the probability of its
tokens minus that of the longer values, i.e. "1" followed by something that does not make it
"10". Decimal scores ("7.5") count toward their integer part. Values the judge gave little mass
to in total (``MIN_MASS``: it wanted to write something else here) give no expected score.

Example:
    >>> import math
    >>> lp = {str(v): math.log(0.05) for v in range(2, 10)}
    >>> lp.update({"1": math.log(0.5), "10": math.log(0.1)})
    >>> conts = {str(v): (v,) for v in range(1, 10)} | {"10": (1, 0)}
    >>> d = ScoreDistribution.from_candidates(lp, conts)
    >>> round(d.probs[1], 2), round(d.probs[10], 2), round(d.mass, 2)
    (0.4, 0.1, 0.9)
    >>> round(d.expected(), 3)
    4.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: the integer scores a judge can give
SCORE_VALUES: tuple[int, ...] = tuple(range(1, 11))
#: below this total probability on the score values, the position is not a score the judge
#: meant to write (e.g. it would rather have written a decimal or a word): no expected score
MIN_MASS = 0.5


@dataclass(frozen=True)
class ScoreDistribution:
    """Probability per score value at one score position; ``mass`` is their total."""

    probs: dict[int, float]

    @property
    def mass(self) -> float:
        return sum(self.probs.values())

    def expected(self, min_mass: float = MIN_MASS) -> float | None:
        """The mean score under the distribution renormalised over 1..10, or None when the
        values hold less than ``min_mass`` of the probability."""
        total = self.mass
        if total < min_mass or total <= 0:
            return None
        return sum(v * p for v, p in self.probs.items()) / total

    @classmethod
    def from_candidates(
        cls, logprobs: Mapping[str, float], continuations: Mapping[str, Sequence[int]]
    ) -> ScoreDistribution:
        """From each value's log-probability of its token continuation (``logprobs``, keyed by
        the value's text) and those continuations: a value whose continuation is a proper prefix
        of another's loses that other's probability (see the module doc)."""
        probs: dict[int, float] = {}
        for value, cont in continuations.items():
            p = math.exp(logprobs[value])
            for other, longer in continuations.items():
                if (
                    other != value
                    and len(longer) > len(cont)
                    and tuple(longer[: len(cont)]) == tuple(cont)
                ):
                    p -= math.exp(logprobs[other])
            probs[int(value)] = max(0.0, p)
        return cls(probs)


def expected_in_original_order(
    distributions: Sequence[ScoreDistribution | None],
    order: Sequence[int],
    min_mass: float = MIN_MASS,
) -> list[float | None]:
    """Expected scores per original response from distributions in shown order
    (``order[j]`` = original index of the response shown j-th)."""
    out: list[float | None] = [None] * len(order)
    for shown, original in enumerate(order):
        d = distributions[shown]
        out[original] = None if d is None else d.expected(min_mass)
    return out
