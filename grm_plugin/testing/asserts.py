"""Check what a reward function returned for a group of completions against the scoring rule
the test judge used, with a message that names every wrong entry.

Example:
    >>> expected_rewards(["hi", "hello there"])
    [0.2222222222222222, 1.0]
    >>> assert_group_rewards([0.2222222222222222, 1.0], ["hi", "hello there"])
    >>> assert_group_rewards([1.0, None], ["hi", "hello there"], failed=[1])
    Traceback (most recent call last):
    ...
    AssertionError: group rewards differ from the judge's rule at 1 of 2 completions:
      [0] 'hi': got 1.0, expected 0.2222222222222222
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from .engines import length_score

Scale = Literal["unit", "raw"]


def _scaled(raw: float, scale: Scale) -> float:
    return (raw - 1.0) / 9.0 if scale == "unit" else raw


def expected_rewards(
    completions: Sequence[str],
    *,
    score_fn: Callable[[str], float] = length_score,
    scale: Scale = "unit",
) -> list[float]:
    """The rewards a rule judge (``RuleJudgeEngine`` or ``SimServer`` with ``score_fn``) gives:
    every sample scores each completion by the rule, so the vote is the rule's score, and
    ``scale="unit"`` maps 1-10 to [0, 1] as the adapters do."""
    return [_scaled(score_fn(c), scale) for c in completions]


def _value(reward: Any, key: str | None) -> Any:
    if key is not None and isinstance(reward, Mapping):
        return reward.get(key)
    return reward


def assert_group_rewards(
    rewards: Sequence[Any],
    completions: Sequence[str],
    *,
    score_fn: Callable[[str], float] = length_score,
    scale: Scale = "unit",
    failed: Collection[int] = (),
    fallback: float | None = None,
    key: str | None = "score",
    tol: float = 1e-6,
) -> None:
    """Assert that ``rewards[i]`` is the rule's reward for ``completions[i]``.

    Args:
        rewards: what the reward function returned, one per completion (floats, None, or dicts
            holding the score under ``key``, as verl's ``compute_score`` returns).
        failed: indices the judge could not score; they must equal ``fallback`` (None for trl,
            the configured fallback for OpenRLHF and verl).
        tol: absolute tolerance (votes are means of floats).
    """
    if len(rewards) != len(completions):
        raise AssertionError(f"{len(rewards)} rewards for {len(completions)} completions")
    want = expected_rewards(completions, score_fn=score_fn, scale=scale)
    failed = set(failed)
    wrong = []
    for i, (got_raw, exp) in enumerate(zip(rewards, want, strict=True)):
        got = _value(got_raw, key)
        target = fallback if i in failed else exp
        if target is None or got is None:
            ok = got is None and target is None
        else:
            ok = isinstance(got, (int, float)) and math.isclose(got, target, abs_tol=tol)
        if not ok:
            wrong.append(f"  [{i}] {completions[i][:40]!r}: got {got!r}, expected {target!r}")
    if wrong:
        raise AssertionError(
            f"group rewards differ from the judge's rule at {len(wrong)} of {len(rewards)} "
            "completions:\n" + "\n".join(wrong)
        )
