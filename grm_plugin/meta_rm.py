"""The meta reward model interface: a scorer of judgments, used to drop bad samples before voting.

Anything with this method works; the trained classifier comes with ``grm_plugin.meta_rm_model``.

Example:
    >>> class LongerIsBetter:
    ...     def score_judgments(self, prompt, shown_responses, judgments):
    ...         return [float(len(j)) for j in judgments]
    >>> isinstance(LongerIsBetter(), MetaRewardModel)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .prompt import Conversation
from .results import Sample


@runtime_checkable
class MetaRewardModel(Protocol):
    """Scores sampled judgments of one item; higher means more likely correct."""

    def score_judgments(
        self,
        prompt: Conversation,
        shown_responses: Sequence[Sequence[str]],
        judgments: Sequence[str],
    ) -> list[float]:
        """One score per judgment; ``shown_responses[i]`` are the responses in the order the
        judge saw them when it wrote ``judgments[i]``."""
        ...


def rate_samples(
    meta_rm: MetaRewardModel,
    prompt: Conversation,
    responses: Sequence[str],
    samples: Sequence[Sample],
) -> list[float]:
    """Rate parsed samples of one item with ``meta_rm``, store each rating in the sample's
    ``meta_score`` and return the ratings. ``responses`` are in the original order; each sample's
    ``order`` says how its judge saw them."""
    shown = [[responses[i] for i in s.order] for s in samples]
    ratings = meta_rm.score_judgments(prompt, shown, [s.text or "" for s in samples])
    if len(ratings) != len(samples):
        raise ValueError(f"meta RM returned {len(ratings)} scores for {len(samples)} judgments")
    for s, m in zip(samples, ratings, strict=True):
        s.meta_score = float(m)
    return [float(m) for m in ratings]
