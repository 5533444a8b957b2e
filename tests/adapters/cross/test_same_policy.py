"""One policy, one set of groups, three adapters: the same rewards (issues 18 and 21).

The three adapters import no framework (trl, verl and OpenRLHF only call them), so this runs in
the core suite: trl's ``GRMReward``, verl's ``compute_score`` (the custom reward function; the
manager adds only DataProto decoding, tested in ``nox -s verl``) and OpenRLHF's in-process target
and HTTP server, each fed the same prompt, responses and judge.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters import verl
from grm_plugin.adapters.openrlhf import OpenRLHFProtocol, OpenRLHFReward, OpenRLHFSettings
from grm_plugin.adapters.trl import GRMReward
from grm_plugin.engines import JudgeEngine
from grm_plugin.policy import RewardPolicy
from grm_plugin.server import ServerSettings, create_app
from grm_plugin.testing import FailingEngine, RuleJudgeEngine, length_score, shown_responses

PROMPT = "Say hi."
REFERENCE = "hello"
K = 3  # voting samples: the "sum" scale is k..10k


def judge(engine: JudgeEngine) -> GenerativeRewardFn:
    return GenerativeRewardFn(engine, samples=K, temperature=0.5)


def via_trl(engine: JudgeEngine, policy: dict, responses: list[str]) -> list[Any]:
    reward = GRMReward(engine=engine, samples=K, temperature=0.5, policy=policy)
    n = len(responses)
    return reward.score([PROMPT] * n, responses, reference=[REFERENCE] * n)


def via_verl(engine: JudgeEngine, policy: dict, responses: list[str]) -> list[dict[str, float]]:
    verl.set_reward_fn(judge(engine))
    settings = {"policy": policy, "group_window": 30.0, "rollout_n": len(responses)}

    async def group() -> list[dict[str, float]]:
        calls = [
            verl.compute_score("src", r, REFERENCE, {"question": PROMPT}, **settings)
            for r in responses
        ]
        return await asyncio.gather(*calls)

    try:
        return asyncio.run(group())
    finally:
        verl.set_reward_fn(None)


def openrlhf_request(responses: list[str]) -> dict[str, list[str]]:
    n = len(responses)
    return {
        "query": [PROMPT + r for r in responses],
        "prompts": [PROMPT] * n,
        "labels": [REFERENCE] * n,
    }


def via_openrlhf(engine: JudgeEngine, policy: dict, responses: list[str]) -> dict[str, Any]:
    settings = OpenRLHFSettings(policy=RewardPolicy.model_validate(policy))
    server = ServerSettings(group_window=30.0, group_size=len(responses))
    body = openrlhf_request(responses)
    return OpenRLHFReward(judge(engine), settings, server).reward(
        body["query"], body["prompts"], body["labels"]
    )


def via_openrlhf_server(engine: JudgeEngine, policy: dict, responses: list[str]) -> dict[str, Any]:
    protocol = OpenRLHFProtocol(OpenRLHFSettings(policy=RewardPolicy.model_validate(policy)))
    server = ServerSettings(group_window=30.0, group_size=len(responses))
    with TestClient(create_app(judge(engine), protocol, server)) as client:
        answer = client.post("/get_reward", json=openrlhf_request(responses))
    assert answer.status_code == 200
    return answer.json()


def all_rewards(engine_factory, policy: dict, responses: list[str]) -> dict[str, list[Any]]:
    return {
        "trl": via_trl(engine_factory(), policy, responses),
        "verl": [o["score"] for o in via_verl(engine_factory(), policy, responses)],
        "openrlhf": via_openrlhf(engine_factory(), policy, responses)["rewards"],
        "openrlhf server": via_openrlhf_server(engine_factory(), policy, responses)["rewards"],
    }


SUM_FALLBACK = {"scale": "sum", "on_failure": "fallback"}


def test_same_rewards_from_every_adapter_when_the_judge_scores() -> None:
    responses = ["hi", "", "hello there", "hi"]
    expected = [K * length_score(r) if r else K * 1.0 for r in responses]  # empty: k x lowest
    for name, rewards in all_rewards(RuleJudgeEngine, SUM_FALLBACK, responses).items():
        assert rewards == expected, name


def test_same_rewards_from_every_adapter_when_the_judge_fails() -> None:
    # issue 18: OpenRLHF gave 1.0 to the empty response and 5.5 to failures (k taken as 1)
    responses = ["a", "", "b"]
    middle = K * 5.5
    for name, rewards in all_rewards(FailingEngine, SUM_FALLBACK, responses).items():
        assert rewards == [middle, K * 1.0, middle], name


@pytest.mark.parametrize("scale, middle, lowest", [("unit", 0.5, 0.0), ("sum", K * 5.5, K * 1.0)])
def test_abstained_failure_next_to_an_empty_is_not_given_the_empty_value(
    scale: str, middle: float, lowest: float
) -> None:
    # issue 21 item 5: the failed samples got the empty's lowest score (the only other value)
    responses = ["a", "", "b"]
    rewards = all_rewards(FailingEngine, {"scale": scale}, responses)
    assert rewards.pop("trl") == [None, lowest, None]  # trl can abstain
    for name, got in rewards.items():
        assert got == [middle, lowest, middle], name


def test_group_size_counts_only_the_responses_the_judge_saw() -> None:
    # issue 21 item 5: the empty response (never shown) was counted
    responses = ["hi", "", "hi", "hey"]
    outs = via_verl(RuleJudgeEngine(), {}, responses)
    assert [o["grm_group_size"] for o in outs] == [2.0] * 4
    logs = via_openrlhf(RuleJudgeEngine(), {}, responses)["extra_logs"]
    assert logs["grm_group_size"] == [2.0] * 4
    assert logs["grm_empty"] == [0.0, 1.0, 0.0, 0.0]
    assert logs["grm_duplicate"] == [0.0, 0.0, 1.0, 0.0]


def test_verl_keeps_prompts_sharing_a_uid_apart() -> None:
    # issue 21 item 7: grouped by uid alone, the second prompt was judged against the first
    # one's question and reference
    engine = RuleJudgeEngine()
    judging = verl.VerlJudging(GenerativeRewardFn(engine))
    settings = verl.VerlSettings(group_window=0.5, rollout_n=2)

    async def two_prompts_one_uid() -> list[dict[str, float]]:
        return await asyncio.gather(
            *(
                judging.judge(verl.JudgeRequest(q, a, a, settings, None, group="u1"))
                for q, a in (("Capital of France?", "Paris"), ("Capital of Peru?", "Lima"))
            )
        )

    outs = asyncio.run(asyncio.wait_for(two_prompts_one_uid(), 60))
    assert [o["grm_group_size"] for o in outs] == [1.0, 1.0]
    seen = {json.dumps(shown_responses(r)): r.messages[-1]["content"] for r in engine.requests}
    assert len(seen) == 2
    assert "Peru" in seen['["Lima"]'] and "France" not in seen['["Lima"]']


def test_trl_judges_a_default_grpo_group_in_one_call() -> None:
    # issue 21 item 19: group_size=4 by default judged trl's default group of 8 in two halves
    engine = RuleJudgeEngine()
    completions = [f"answer number {i}" for i in range(8)]  # num_generations=8, trl's default
    rewards = GRMReward(engine=engine).score([PROMPT] * 8, completions)
    assert len(rewards) == 8 and None not in rewards
    assert [len(shown_responses(r)) for r in engine.requests] == [8]
    capped = RuleJudgeEngine()
    GRMReward(engine=capped, group_size=4).score([PROMPT] * 8, completions)
    assert [len(shown_responses(r)) for r in capped.requests] == [4, 4]
