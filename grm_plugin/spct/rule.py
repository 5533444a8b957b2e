"""The paper's rule reward for online RL on the judge: +1 when the judgment is correct, else -1.

Correct: the parsed scores rank the best response strictly highest (a tie is wrong); with one
response, the score equals the rating. An unparsable judgment is wrong (-1): there is no format
reward, so the format is kept by the KL term, as in the paper.

Example:
    >>> judgment_reward("Final Scores: [[8, 3]]", order=[1, 0], best=1)
    1.0
    >>> judgment_reward("Final Scores: [[5, 5]]", order=[0, 1], best=0)
    -1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..items import is_correct
from ..parsing import parse_judgment


def completion_text(completion: Any) -> str:
    """The text of a trl completion: a string, or a conversational ``[{"role", "content"}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return ""


def judgment_outcome(
    text: str,
    order: Sequence[int],
    best: int | None = None,
    rating: float | None = None,
    quoted: Sequence[str] = (),
) -> tuple[bool, bool]:
    """(parsed, correct) for one judgment of responses shown in ``order`` (``order[j]`` =
    original index of the response shown j-th); ``best`` and ``rating`` are in original order."""
    n = len(order)
    parsed = parse_judgment(text, n, quoted=quoted)
    if parsed.scores is None:
        return False, False
    scores = [0.0] * n
    for shown, original in enumerate(order):
        scores[original] = parsed.scores[shown]
    if n == 1:
        return True, rating is not None and scores[0] == float(rating)
    return True, best is not None and 0 <= best < n and is_correct(scores, best)


def judgment_reward(
    text: str,
    order: Sequence[int],
    best: int | None = None,
    rating: float | None = None,
    quoted: Sequence[str] = (),
) -> float:
    """+1.0 for a correct judgment, -1.0 otherwise (unparsable included)."""
    return 1.0 if judgment_outcome(text, order, best, rating, quoted)[1] else -1.0


def _column(values: Sequence[Any] | None, i: int) -> Any:
    return None if values is None else values[i]


def spct_rule_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    order: Sequence[Sequence[int]],
    best: Sequence[int | None] | None = None,
    rating: Sequence[float | None] | None = None,
    n: Sequence[int] | None = None,
    responses: Sequence[Sequence[str]] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """A trl reward function (GRPOTrainer ``reward_funcs``): +1/-1 per completion.

    The item's label comes from dataset columns, which trl passes as keyword lists: ``order``
    (the response order of that prompt), ``best`` (n >= 2) or ``rating`` (n = 1), optionally
    ``n`` (checked against the order) and ``responses`` (score lists quoted from a response are
    ignored, as in scoring). Logs ``spct/accuracy`` and ``spct/parse_rate`` through trl's
    ``log_metric`` when given.

    Example:
        >>> spct_rule_reward(["p", "p"], ["Final Scores: [[2, 9]]", "no scores"],
        ...                  best=[1, 1], order=[[0, 1], [0, 1]])
        [1.0, -1.0]
    """
    rewards: list[float] = []
    parsed_count = 0
    for i, completion in enumerate(completions):
        item_order = list(order[i])
        if n is not None and n[i] != len(item_order):
            raise ValueError(f"row {i}: n={n[i]} but the order has {len(item_order)} entries")
        parsed, correct = judgment_outcome(
            completion_text(completion),
            item_order,
            _column(best, i),
            _column(rating, i),
            quoted=_column(responses, i) or (),
        )
        parsed_count += parsed
        rewards.append(1.0 if correct else -1.0)
    if log_metric is not None and rewards:
        log_metric("spct/accuracy", sum(r > 0 for r in rewards) / len(rewards))
        log_metric("spct/parse_rate", parsed_count / len(rewards))
    return rewards
