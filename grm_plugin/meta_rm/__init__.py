"""The meta reward model interface: a scorer of judgments, used to drop bad samples before voting.

Anything with this method works; the trained classifier comes with ``grm_plugin.meta_rm.model``.
An optional ``identity() -> str`` names what the scores depend on (its weights and input
settings): the judgment cache keys judgments by it, so that judgments filtered by other weights
are never reused (``meta_rm_identity``). Without it, judgments are reused within a run only.

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

from ..prompt import Conversation
from ..results import Sample


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


def meta_rm_identity(meta_rm: MetaRewardModel | None) -> str | None:
    """What the meta RM's scores depend on, for the judgment cache's key: ``""`` without a
    meta RM, its class and ``meta_rm.identity()`` when it has that method, else None
    (unknown).

    >>> class Versioned:
    ...     def score_judgments(self, prompt, shown_responses, judgments):
    ...         return [0.0] * len(judgments)
    ...     def identity(self):
    ...         return "weights-v2"
    >>> meta_rm_identity(Versioned()), meta_rm_identity(None)
    ('Versioned:weights-v2', '')
    """
    if meta_rm is None:
        return ""
    identity = getattr(meta_rm, "identity", None)
    if not callable(identity):
        return None
    return f"{type(meta_rm).__qualname__}:{identity()}"


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
