"""One reward policy for every adapter: how a judgment becomes what the RL framework gets back.

Adapters (trl, verl, OpenRLHF) only translate their framework's calling convention; what a score
is worth, what a failed or empty judgment gets and what is logged is decided here, once.

API:

- ``RewardPolicy`` (pydantic, strict): ``scale`` (``"unit"`` [0, 1], ``"raw"`` 1-10, ``"sum"``
  the paper's voting sum over k samples, or a function of the 1-10 score), ``on_failure``
  (``"abstain"`` or ``"fallback"``), ``fallback`` (output scale; None: the middle of the scale),
  ``empty`` (what an empty response gets; ``"lowest"`` of the scale by default), and
  ``use_reference`` (labels become the judge's reference answer).
- ``RewardPolicy.apply(result) -> list[RewardValue]``: one value per response of a judged
  item; the voting-sum scale's k is the result's (``num_voted``, else ``votes``: what its judge
  is set up for). ``RewardValue.value`` is None when the policy abstains (trl: ``None``, the
  sample is left out of that reward); frameworks that need a number call
  ``RewardPolicy.fill(values)``. Adapters go through ``grm_plugin.group_rewards``, which does
  both for a group of samples.
- ``RewardValue.flags() -> dict[str, float]``: every key of ``REWARD_KEYS``, always all of them
  (verl and OpenRLHF build their log columns from the first sample's keys).
- ``summarize(values) -> dict[str, float]``: the same keys averaged over a batch (rates), for
  frameworks that log aggregate metrics (trl's ``log_metric``).
- ``to_reference(label) -> str | None``: a dataset label as reference text.

Keys (``Key`` and ``failure_key``): ``grm_failed``, ``grm_failed_<FailureKind value>`` (engine,
timeout, parse, empty, bad_input), ``grm_abstained``, ``grm_empty``, ``grm_cache_hit``,
``grm_duplicate`` (an identical response of the same item was judged instead),
``grm_truncated``, ``grm_no_prompt``, ``grm_raw`` (the 1-10 score, 0.0 when none: a NaN would
poison the frameworks' means), ``grm_num_valid``.

Example:
    >>> from grm_plugin.results import FailureKind, JudgmentResult
    >>> policy = RewardPolicy()  # unit scale, abstain on failure, lowest score when empty
    >>> result = JudgmentResult(scores=[10.0, None, 1.0], score_sums=[10.0, None, None],
    ...                         flags=[[], [], ["empty_response"]], num_valid=1)
    >>> values = policy.apply(result)
    >>> [v.value for v in values]
    [1.0, None, 0.0]
    >>> policy.fill(values)  # for frameworks that need a number: the group's mean, advantage 0
    [1.0, 0.5, 0.0]
    >>> summed = RewardPolicy(scale="sum")  # k comes from the result: 3 votes, so 3..30
    >>> failed = summed.apply(JudgmentResult(failed=True, votes=3), n=2)
    >>> summed.fill(failed), summed.empty_value(k=3)  # the middle of the scale; its bottom
    ([16.5, 16.5], 3.0)
    >>> values[1].flags()["grm_failed"], values[2].flags()["grm_empty"]
    (1.0, 1.0)
    >>> RewardPolicy(scale="raw", on_failure="fallback", fallback=3.0).apply(
    ...     JudgmentResult(failed=True, failure_kind=FailureKind.TIMEOUT), n=1)[0].value
    3.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .cache import CACHED_FLAG, DUPLICATE_FLAG
from .parsing import SCORE_MAX, SCORE_MIN, to_unit
from .results import FailureKind, JudgmentResult, ResponseFlag

__all__ = [
    "REWARD_KEYS",
    "Key",
    "RewardPolicy",
    "RewardValue",
    "failure_key",
    "summarize",
    "to_reference",
    "votes_of",
]

#: flags the core puts on a response (``JudgmentResult.flags``) that the policy reports
EMPTY_FLAG = "empty_response"
#: a response without a content token (``JudgeConfig.minimal_content``): treated as empty
MINIMAL_CONTENT_FLAG = "minimal_content"
TRUNCATED_FLAG = "truncated"
#: a response whose text no judge request can carry: a bad-input failure of that response only
INVALID_TEXT_FLAG: str = ResponseFlag.INVALID_TEXT.value
_EMPTY_FLAGS = frozenset({EMPTY_FLAG, MINIMAL_CONTENT_FLAG})


class Key(str, Enum):
    """Log keys, the same in every framework (values: 0/1 per sample, rates when averaged)."""

    FAILED = "grm_failed"
    ABSTAINED = "grm_abstained"
    EMPTY = "grm_empty"
    CACHE_HIT = "grm_cache_hit"
    DUPLICATE = "grm_duplicate"
    TRUNCATED = "grm_truncated"
    NO_PROMPT = "grm_no_prompt"
    RAW = "grm_raw"
    NUM_VALID = "grm_num_valid"


def failure_key(kind: FailureKind) -> str:
    """The log key counting failures of one kind.

    >>> failure_key(FailureKind.TIMEOUT)
    'grm_failed_timeout'
    """
    return f"{Key.FAILED.value}_{kind.value}"


#: every key of ``RewardValue.flags()``, in a fixed order
REWARD_KEYS: tuple[str, ...] = (
    Key.FAILED.value,
    *(failure_key(k) for k in FailureKind),
    Key.ABSTAINED.value,
    Key.EMPTY.value,
    Key.CACHE_HIT.value,
    Key.DUPLICATE.value,
    Key.TRUNCATED.value,
    Key.NO_PROMPT.value,
    Key.RAW.value,
    Key.NUM_VALID.value,
)

ScaleName = Literal["unit", "raw", "sum"]


@dataclass
class RewardValue:
    """What one response gets. ``value`` None = abstain (see ``RewardPolicy.fill``)."""

    value: float | None
    raw: float | None = None
    failed: bool = False
    failure_kind: FailureKind | None = None
    empty: bool = False
    cached: bool = False
    duplicate: bool = False
    truncated: bool = False
    no_prompt: bool = False
    num_valid: int = 0
    error: str | None = None
    #: k of the voting-sum scale this value is on (``fill``'s fallback is on the same scale)
    votes: int = 1

    def flags(self) -> dict[str, float]:
        """Every key of ``REWARD_KEYS`` as a float."""
        out = dict.fromkeys(REWARD_KEYS, 0.0)
        out[Key.FAILED.value] = float(self.failed)
        if self.failed:
            out[failure_key(self.failure_kind or FailureKind.ENGINE)] = 1.0
        out[Key.ABSTAINED.value] = float(self.failed and self.value is None)
        out[Key.EMPTY.value] = float(self.empty)
        out[Key.CACHE_HIT.value] = float(self.cached)
        out[Key.DUPLICATE.value] = float(self.duplicate)
        out[Key.TRUNCATED.value] = float(self.truncated)
        out[Key.NO_PROMPT.value] = float(self.no_prompt)
        out[Key.RAW.value] = 0.0 if self.raw is None else float(self.raw)
        out[Key.NUM_VALID.value] = float(self.num_valid)
        return out


def to_reference(label: Any) -> str | None:
    """A dataset label as the judge's reference: None, "" and whitespace give none; a number
    or a structure is written as JSON.

    >>> to_reference("  "), to_reference(42), to_reference({"answer": "4"})
    (None, '42', '{"answer": "4"}')
    """
    if label is None:
        return None
    text = label if isinstance(label, str) else json.dumps(label, ensure_ascii=False, default=str)
    return text if text.strip() else None


class RewardPolicy(BaseModel):
    """What the framework gets for a judgment, a failure and an empty response.

    Args:
        scale: ``"unit"`` (default): (s - 1) / 9 in [0, 1], mixes with 0/1 rule rewards;
            ``"raw"``: the judge's 1-10 (mean over voting samples); ``"sum"``: the sum over the
            k voting samples (the paper's voting score, k..10k); or a function of the 1-10 score
            (picklable where the framework pickles rewards).
        on_failure: ``"abstain"`` (default): no value where the framework allows it (trl
            ``None``); elsewhere ``fill`` gives the mean of the scored responses judged with it,
            so under GRPO the sample gets zero advantage, or ``fallback`` when none scored.
            ``"fallback"``: always ``fallback``. Flagged either way (``grm_failed``).
        fallback: reward on failure, on the output scale; None: the middle of the scale (a
            failed judgment says nothing about the response).
        empty: reward of an empty response (never sent to the judge): ``"lowest"`` of the scale
            (nothing else would push the policy away from answering nothing), or a number.
        use_reference: a dataset label becomes the judge's reference answer.

    Example:
        >>> RewardPolicy(scale="sum").lowest(k=4), RewardPolicy().middle()
        (4.0, 0.5)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: ScaleName | Callable[[float], float] = Field("unit", description="output scale")
    on_failure: Literal["abstain", "fallback"] = "abstain"
    fallback: float | None = Field(None, description="output scale; None: middle of the scale")
    empty: Literal["lowest"] | float = Field("lowest", description="reward of an empty response")
    use_reference: bool = Field(True, description="labels become the judge's reference answer")

    @field_validator("fallback", "empty")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    # ------------------------------------------------------------------------------- scale

    def scaled(self, mean: float, k: int = 1, score_sum: float | None = None) -> float:
        """A judge score (mean over voters, 1-10) on the output scale; ``score_sum`` is used
        by ``"sum"`` (else ``mean * k``)."""
        if self.scale == "unit":
            return to_unit(mean)
        if self.scale == "raw":
            return float(mean)
        if self.scale == "sum":
            return float(score_sum) if score_sum is not None else float(mean) * k
        return float(self.scale(float(mean)))  # type: ignore[operator]

    def lowest(self, k: int = 1) -> float:
        """The bottom of the output scale (what a 1 from every voter gives)."""
        return self.scaled(SCORE_MIN, k)

    def middle(self, k: int = 1) -> float:
        """The middle of the output scale."""
        return self.scaled((SCORE_MIN + SCORE_MAX) / 2, k)

    def fallback_value(self, k: int = 1) -> float:
        """Reward of a failed judgment when a number is needed."""
        return float(self.fallback) if self.fallback is not None else self.middle(k)

    def empty_value(self, k: int = 1) -> float:
        """Reward of an empty response."""
        return self.lowest(k) if self.empty == "lowest" else float(self.empty)

    def reference(self, label: Any) -> str | None:
        """The judge's reference for a dataset label (None when ``use_reference`` is off)."""
        return to_reference(label) if self.use_reference else None

    # ------------------------------------------------------------------------------- apply

    def apply(
        self, result: JudgmentResult, n: int | None = None, *, k: int | None = None
    ) -> list[RewardValue]:
        """One ``RewardValue`` per response of ``result`` (``n`` responses: a failed result
        may carry no scores). ``k``: voting samples per judgment (for ``"sum"``); None: the
        result's (``votes_of``)."""
        n = len(result.scores) if n is None else n
        k = votes_of(result) if k is None else k
        out: list[RewardValue] = []
        for i in range(n):
            flags = result.flags[i] if i < len(result.flags) else []
            score = result.scores[i] if i < len(result.scores) else None
            ssum = result.score_sums[i] if i < len(result.score_sums) else None
            common = dict(
                cached=CACHED_FLAG in flags,
                duplicate=DUPLICATE_FLAG in flags,
                truncated=TRUNCATED_FLAG in flags,
                num_valid=result.num_valid,
                votes=k,
            )
            if _EMPTY_FLAGS.intersection(flags):
                out.append(RewardValue(self.empty_value(k), empty=True, **common))
            elif score is None or (isinstance(score, float) and math.isnan(score)):
                kind, error = result.failure_kind or FailureKind.ENGINE, result.error
                if INVALID_TEXT_FLAG in flags:
                    kind, error = FailureKind.BAD_INPUT, "the response is not valid Unicode text"
                value = None if self.on_failure == "abstain" else self.fallback_value(k)
                out.append(
                    RewardValue(
                        value,
                        failed=True,
                        failure_kind=kind,
                        error=error or "no score",
                        **common,
                    )
                )
            else:
                out.append(
                    RewardValue(self.scaled(score, k, ssum), raw=float(score), **common)  # type: ignore[arg-type]
                )
        return out

    def fill(self, values: Sequence[RewardValue], k: int | None = None) -> list[float]:
        """Numbers for frameworks that cannot abstain: an abstained value becomes the mean of
        the other values of ``values`` (give one prompt's group: at the mean of the rest it
        leaves the group's mean unchanged, so GRPO gives it zero advantage) when the judge
        scored at least one of them, else ``fallback_value``: the lowest score of an empty
        response says nothing about the responses the judge failed on. ``k``: None takes the
        values' own."""
        if k is None:
            k = max((v.votes for v in values), default=1)
        known = [v.value for v in values if v.value is not None]
        scored = any(v.raw is not None for v in values)
        mean = sum(known) / len(known) if scored and known else self.fallback_value(k)
        return [mean if v.value is None else v.value for v in values]


def votes_of(result: JudgmentResult) -> int:
    """k of a judgment on the voting-sum scale: the samples that voted, else the samples its
    judge votes with (a failed or all-empty judgment), else 1.

    >>> votes_of(JudgmentResult(num_voted=2, votes=3)), votes_of(JudgmentResult(votes=3))
    (2, 3)
    """
    return result.num_voted or result.votes or 1


def summarize(values: Sequence[RewardValue]) -> dict[str, float]:
    """``REWARD_KEYS`` averaged over ``values`` (flags become rates; ``grm_raw`` is the mean
    over scored responses only, absent when none scored).

    >>> summarize([RewardValue(1.0, raw=10.0), RewardValue(None, failed=True)])["grm_failed"]
    0.5
    """
    if not values:
        return {}
    flags = [v.flags() for v in values]
    out = {key: sum(f[key] for f in flags) / len(flags) for key in REWARD_KEYS}
    raws = [v.raw for v in values if v.raw is not None]
    if raws:
        out[Key.RAW.value] = sum(raws) / len(raws)
    else:
        del out[Key.RAW.value]
    return out
