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
