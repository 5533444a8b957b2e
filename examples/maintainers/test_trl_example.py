"""trl: a reward function backed by a generative reward model, tested with no GPU and no model."""

import asyncio

from grm_plugin.adapters.trl import GRMReward
from grm_plugin.testing import FaultKind, assert_group_rewards


def test_trl_reward_function(grm_judge_server, grm_judge_config):
    reward = GRMReward(grm_judge_config, group_size=4)  # what goes in GRPOTrainer(reward_funcs=)
    prompts, completions = ["What is 2+2?"] * 4, ["4", "four", "It is 4.", "2 + 2 = 4"]
    rewards = asyncio.run(reward(prompts=prompts, completions=completions))
    assert_group_rewards(rewards, completions)  # the judge's rule, read back from its prompt
    grm_judge_server.faults.inject(FaultKind.SERVER_ERROR, times=100)  # the judge goes down
    new = ["5", "five", "It is 5.", "2 + 2 = 5"]  # (judgments are cached: new completions)
    rewards = asyncio.run(reward(prompts=prompts, completions=new))
    assert_group_rewards(rewards, new, failed=range(4))  # None: trl leaves them out
