"""Groups of responses + a judge + a policy -> what each sample gets, for every adapter.

trl, verl and OpenRLHF differ in how samples reach the reward (a whole batch, one sample at a
time, HTTP requests), not in what a judged group is worth. This module is that second part,
once: adapters translate their calling convention into groups (or ``GroupBatcher`` items) and
the answers back into their framework's types.

- ``judge_groups(rm, policy, groups, max_size=None)``: the batch path (trl). Each ``Group`` is one
  prompt's responses; identical responses are judged once (unless the judge's cache config says
  ``dedup: false``), empty ones never reach the judge, and a group is judged whole unless
  ``max_size`` caps it (then in near-equal chunks).
- ``judged_reward(policy, judged, empty=...)``: the one-sample-at-a-time path (verl, OpenRLHF),
  for a ``GroupBatcher`` answer.
- ``group_rewards(policy, result, members)``: what both use: one judgment and the samples
  judged in it -> one ``SampleReward`` each.

The voting-sum scale's k comes from the judgment (``grm_plugin.policy.votes_of``), never from
an adapter, so ``scale: sum`` gives the same numbers everywhere.

Example:
    >>> import asyncio
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=3, temperature=0.5)
    >>> policy = RewardPolicy(scale="sum", on_failure="fallback")
    >>> (group,) = asyncio.run(judge_groups(rm, policy, [Group("Say hi", ["hi", "", "hi"])]))
    >>> [s.reward for s in group]  # RuleJudgeEngine: 1 + len; 3 votes; empty: 3 x the lowest
    [9.0, 3.0, 9.0]
    >>> [s.value.duplicate for s in group], [s.group_size for s in group]
    ([False, False, True], [1, 1, 1])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .cache import DUPLICATE_FLAG
from .grouping import Judged
from .policy import RewardPolicy, RewardValue, votes_of
from .prompt import Conversation
from .results import FailureKind, JudgmentResult
from .reward import GenerativeRewardFn

__all__ = [
    "Group",
    "SampleReward",
    "balanced_chunks",
    "group_rewards",
    "judge_groups",
    "judged_reward",
    "unjudged_groups",
]


@dataclass(frozen=True)
class Group:
    """One prompt's responses (and reference), in the framework's sample order."""

    prompt: Conversation
    responses: Sequence[str]
    reference: str | None = None


@dataclass
class SampleReward:
    """What one sample gets."""

    #: the policy's value and flags; ``value.value`` None = abstained (trl returns that)
    value: RewardValue
    #: the number for frameworks that need one: an abstained sample gets ``RewardPolicy.fill``
    reward: float
    #: distinct responses the judge saw in this sample's judgment (empty ones are never shown)
    group_size: int
    #: the first voting judgment's principles and critique ("" when none voted)
    principles: str = ""
    critique: str = ""


def balanced_chunks(n: int, size: int | None) -> list[range]:
    """``range(n)`` in ceil(n / size) near-equal chunks (5 by 4 -> 3 + 2, not 4 + 1: a lone
    response would be judged pointwise, unlike its neighbours); ``size`` None: one chunk.

    >>> [len(c) for c in balanced_chunks(5, 4)], [len(c) for c in balanced_chunks(8, None)]
    ([3, 2], [8])
    """
    if n == 0:
        return []
    parts = 1 if size is None else max(1, math.ceil(n / max(1, size)))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for j in range(parts):
        length = base + (1 if j < extra else 0)
        out.append(range(start, start + length))
        start += length
    return out


def group_rewards(
    policy: RewardPolicy,
    result: JudgmentResult,
    members: Sequence[int],
    empty: Sequence[bool] | None = None,
) -> list[SampleReward]:
    """One ``SampleReward`` per sample judged in ``result``.

    Args:
        members: for each sample, the index of its response in ``result`` (samples with the
            same response share one).
        empty: for each sample, whether its response is empty as the caller sees it; it gets
            the empty value even when the judgment failed before flagging it (a timeout).

    Example:
        >>> policy = RewardPolicy(scale="raw")
        >>> failed = JudgmentResult(failed=True, flags=[["empty_response"], []], scores=[None] * 2)
        >>> [s.reward for s in group_rewards(policy, failed, [0, 1])]  # not the empty's 1.0
        [1.0, 5.5]
    """
    k = votes_of(result)
    n = max(len(result.scores), max(members, default=-1) + 1)
    per_response = policy.apply(result, n=n, k=k)
    values: list[RewardValue] = []
    judged: set[int] = set()
    seen: set[int] = set()
    for s, m in enumerate(members):
        value = per_response[m]
        if empty is not None and empty[s] and not value.empty:
            value = RewardValue(
                policy.empty_value(k), empty=True, num_valid=result.num_valid, votes=k
            )
        if value.empty:
            value = dataclasses.replace(value)  # each sample its own (adapters add flags)
        else:
            judged.add(m)
            # a second sample with a response already in this judgment: judged once
            repeat = m in seen or DUPLICATE_FLAG in _flags(result, m)
            value = dataclasses.replace(value, duplicate=repeat)
        seen.add(m)
        values.append(value)
    rewards = policy.fill(values, k)
    voter = next((x for x in result.samples if x.voted), None)
    principles, critique = (voter.principles, voter.critique) if voter else ("", "")
    return [
        SampleReward(v, r, len(judged), principles, critique)
        for v, r in zip(values, rewards, strict=True)
    ]


def judged_reward(policy: RewardPolicy, judged: Judged, *, empty: bool = False) -> SampleReward:
    """This sample's reward from a ``GroupBatcher`` answer (``empty``: its response is).

    Example:
        >>> from grm_plugin.results import FailureKind
        >>> timeout = JudgmentResult(failed=True, failure_kind=FailureKind.TIMEOUT, votes=3)
        >>> policy = RewardPolicy(scale="sum", on_failure="fallback")
        >>> judged_reward(policy, Judged(timeout, 0, (0, 1), 0), empty=True).reward
        3.0
    """
    flags = [False] * len(judged.members)
    flags[judged.position] = empty
    return group_rewards(policy, judged.result, judged.members, flags)[judged.position]


# ------------------------------------------------------------------------------ batch path


@dataclass
class _Call:
    """One judge call of a group: the responses shown and, per sample, its index in them."""

    group: int
    responses: list[str]
    samples: list[int]
    members: list[int]
    empty: list[bool]


def _plan(groups: Sequence[Group], max_size: int | None, dedup: bool) -> list[_Call]:
    calls: list[_Call] = []
    for g, group in enumerate(groups):
        first: dict[str, int] = {}  # response -> its first sample in the group
        distinct: list[int] = []  # samples whose responses are shown
        original: dict[int, int] = {}  # sample -> the sample whose identical response is shown
        empties: set[int] = set()
        for s, text in enumerate(group.responses):
            if not text.strip():
                empties.add(s)
            elif dedup and text in first:
                original[s] = first[text]
            else:
                first.setdefault(text, s)
                distinct.append(s)
        chunks = balanced_chunks(len(distinct), max_size) or [range(0)]
        call_of: dict[int, tuple[_Call, int]] = {}
        for c in chunks:
            call = _Call(g, [], [], [], [])
            for j in c:
                s = distinct[j]
                call_of[s] = (call, len(call.responses))
                call.responses.append(group.responses[s])
            calls.append(call)
        for s in range(len(group.responses)):
            if s in empties:
                # an empty response is never shown: it rides along with the group's first call,
                # so it is on that judgment's scale (k), and costs the judge nothing
                call = calls[-len(chunks)]
                if "" not in call.responses:
                    call.responses.append("")
                at, is_empty = call.responses.index(""), True
            else:
                call, at = call_of[original.get(s, s)]
                is_empty = False
            call.samples.append(s)
            call.members.append(at)
            call.empty.append(is_empty)
    return calls


def _assemble(
    policy: RewardPolicy,
    groups: Sequence[Group],
    calls: Sequence[_Call],
    results: Sequence[JudgmentResult],
) -> list[list[SampleReward]]:
    out: list[list[SampleReward | None]] = [[None] * len(g.responses) for g in groups]
    for call, result in zip(calls, results, strict=True):
        rewards = group_rewards(policy, result, call.members, call.empty)
        for s, reward in zip(call.samples, rewards, strict=True):
            out[call.group][s] = reward
    return out  # type: ignore[return-value]


async def judge_groups(
    rm: GenerativeRewardFn,
    policy: RewardPolicy,
    groups: Sequence[Group],
    *,
    max_size: int | None = None,
) -> list[list[SampleReward]]:
    """Judge every group (concurrently, within the judge's ``deadline.batch``); one list of
    ``SampleReward`` per group, in its sample order. Never raises for a judge failure.

    ``max_size``: distinct responses per judge call at most (None: the whole group at once).
    """
    cache = getattr(rm, "cache_config", None)
    calls = _plan(groups, max_size, cache.dedup if cache is not None else True)
    calls = [c for c in calls if c.responses]
    results = await rm.ascore_batch(
        [groups[c.group].prompt for c in calls],
        [c.responses for c in calls],
        [groups[c.group].reference for c in calls],
    )
    return _assemble(policy, groups, calls, results)


def unjudged_groups(
    policy: RewardPolicy,
    groups: Sequence[Group],
    error: str,
    kind: FailureKind = FailureKind.ENGINE,
    *,
    votes: int = 0,
) -> list[list[SampleReward]]:
    """What ``judge_groups`` gives when there is no judge to ask (e.g. it could not be built):
    every response failed with ``kind``, empty ones the empty value.

    >>> (group,) = unjudged_groups(RewardPolicy(), [Group("Q?", ["a", ""])], "no judge")
    >>> [s.value.value for s in group], [s.value.failed for s in group]
    ([None, 0.0], [True, False])
    """
    calls = [c for c in _plan(groups, None, True) if c.responses]
    results = [
        JudgmentResult(failed=True, failure_kind=kind, error=error, votes=votes) for _ in calls
    ]
    return _assemble(policy, groups, calls, results)


def _flags(result: JudgmentResult, index: int) -> list[str]:
    return result.flags[index] if index < len(result.flags) else []
