"""The one reward policy: scales, failures, empty responses, flags (grm_plugin.policy)."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from grm_plugin import GenerativeRewardFn
from grm_plugin.policy import REWARD_KEYS, Key, RewardPolicy, failure_key, summarize
from grm_plugin.results import FailureKind, JudgmentResult
from grm_plugin.testing import FailingEngine, RuleJudgeEngine, length_score


def double(score: float) -> float:  # module level: picklable
    return 2 * score


def test_scales_on_a_real_judgment() -> None:
    rm = GenerativeRewardFn(RuleJudgeEngine(), samples=3, temperature=0.5)
    result = rm.score("Say hi", ["hi", "hello there"])
    raw = [length_score("hi"), length_score("hello there")]
    assert [v.value for v in RewardPolicy(scale="raw").apply(result)] == raw
    assert [v.value for v in RewardPolicy().apply(result)] == [(s - 1) / 9 for s in raw]
    assert [v.value for v in RewardPolicy(scale="sum").apply(result, k=3)] == [3 * s for s in raw]
    assert [v.value for v in RewardPolicy(scale=double).apply(result)] == [2 * s for s in raw]
    assert [v.raw for v in RewardPolicy(scale="sum").apply(result, k=3)] == raw


@pytest.mark.parametrize(
    "scale, k, lowest, middle", [("unit", 1, 0.0, 0.5), ("raw", 1, 1.0, 5.5), ("sum", 4, 4.0, 22.0)]
)
def test_scale_ends(scale: str, k: int, lowest: float, middle: float) -> None:
    policy = RewardPolicy(scale=scale)
    assert (policy.lowest(k), policy.middle(k), policy.fallback_value(k)) == (
        lowest,
        middle,
        middle,
    )
    assert policy.empty_value(k) == lowest


def test_failure_abstains_or_falls_back_flagged_by_kind() -> None:
    rm = GenerativeRewardFn(FailingEngine())
    result = rm.score("Q?", ["a", "b"])
    assert result.failed and result.failure_kind is FailureKind.ENGINE
    for policy, value in [
        (RewardPolicy(), None),
        (RewardPolicy(on_failure="fallback"), 0.5),
        (RewardPolicy(on_failure="fallback", fallback=-1.0), -1.0),
    ]:
        values = policy.apply(result)
        assert [v.value for v in values] == [value, value]
        flags = values[0].flags()
        assert flags[Key.FAILED.value] == 1.0 and flags[failure_key(FailureKind.ENGINE)] == 1.0
        assert flags[Key.ABSTAINED.value] == float(value is None)
        assert flags[failure_key(FailureKind.PARSE)] == 0.0


def test_fill_gives_failed_sample_the_groups_mean() -> None:
    # a group where one response was not scored: filled with the mean of the others, so the
    # group mean (what GRPO centres on) is unchanged and that sample's advantage is exactly 0
    result = JudgmentResult(scores=[9.0, None, 3.0, 6.0], flags=[[], [], [], []], num_valid=1)
    policy = RewardPolicy(scale="raw")
    filled = policy.fill(policy.apply(result))
    others = [9.0, 3.0, 6.0]
    assert filled[1] == sum(others) / 3
    assert sum(filled) / 4 - filled[1] == pytest.approx(0.0)
    nothing = policy.apply(JudgmentResult(failed=True), n=2)
    assert policy.fill(nothing) == [5.5, 5.5]


def test_empty_response_gets_lowest_not_failure() -> None:
    rm = GenerativeRewardFn(RuleJudgeEngine())
    result = rm.score("Q?", ["", "an answer"])
    values = RewardPolicy().apply(result)
    assert values[0].value == 0.0 and values[0].empty and not values[0].failed
    assert values[0].flags()[Key.EMPTY.value] == 1.0
    assert values[1].value == pytest.approx((length_score("an answer") - 1) / 9)
    assert RewardPolicy(empty=0.25).apply(rm.score("Q?", [" "]))[0].value == 0.25


def test_every_value_has_every_key_in_the_same_order() -> None:
    results = [
        GenerativeRewardFn(RuleJudgeEngine()).score("Q?", ["a", ""]),
        GenerativeRewardFn(FailingEngine()).score("Q?", ["a"]),
    ]
    keys = {tuple(v.flags()) for r in results for v in RewardPolicy().apply(r)}
    assert keys == {REWARD_KEYS}
    assert all(failure_key(k) in REWARD_KEYS for k in FailureKind)


def test_summarize_rates() -> None:
    policy = RewardPolicy()
    values = policy.apply(JudgmentResult(scores=[10.0, None], flags=[[], []], num_valid=1))
    summary = summarize(values)
    assert summary[Key.FAILED.value] == 0.5 and summary[Key.RAW.value] == 10.0
    assert "grm_raw" not in summarize(policy.apply(JudgmentResult(failed=True), n=1))


def test_reference_from_labels() -> None:
    assert RewardPolicy().reference(" ") is None
    assert RewardPolicy().reference(7) == "7"
    assert RewardPolicy(use_reference=False).reference("Paris") is None


def test_strict_and_picklable() -> None:
    with pytest.raises(ValidationError):
        RewardPolicy(score_scale="raw")  # the old adapters' names are refused, not ignored
    with pytest.raises(ValidationError):
        RewardPolicy(fallback=float("nan"))
    with pytest.raises(ValidationError):
        RewardPolicy(scale="logit")
    policy = RewardPolicy(scale=double, on_failure="fallback")
    assert pickle.loads(pickle.dumps(policy)).scaled(4.0) == 8.0


def test_failed_next_to_only_empty_responses_gets_the_fallback_not_the_empty_value() -> None:
    # issue 21 item 5: the empty's lowest score was the only "other value" to fill from
    rm = GenerativeRewardFn(FailingEngine())
    policy = RewardPolicy(scale="raw")
    values = policy.apply(rm.score("Q?", ["a", "", "b"]))
    assert [v.empty for v in values] == [False, True, False]
    assert policy.fill(values) == [5.5, 1.0, 5.5]
    # with something scored, the failure still gets the others' mean (zero GRPO advantage)
    mixed = JudgmentResult(scores=[9.0, None, None], flags=[[], [], ["empty_response"]])
    assert policy.fill(policy.apply(mixed)) == [9.0, 5.0, 1.0]


def test_votes_come_from_the_judgment() -> None:
    # issue 18: adapters each worked out k (OpenRLHF not at all: k=1 on the "sum" scale)
    policy = RewardPolicy(scale="sum", on_failure="fallback")
    failed = GenerativeRewardFn(FailingEngine(), samples=3, temperature=0.5).score("Q?", ["a", ""])
    assert failed.votes == 3
    assert [v.value for v in policy.apply(failed)] == [16.5, 3.0]
    scored = GenerativeRewardFn(RuleJudgeEngine(), samples=3, temperature=0.5).score(
        "Q?", ["", "ab"]
    )
    assert [v.value for v in policy.apply(scored)] == [3.0, 3 * length_score("ab")]
    # two of three samples voted: an empty response is the bottom of that judgment's 2..20
    partial = JudgmentResult(
        scores=[1.0, None],
        score_sums=[2.0, None],
        flags=[[], ["empty_response"]],
        num_voted=2,
        votes=3,
    )
    assert [v.value for v in policy.apply(partial)] == [2.0, 2.0]
