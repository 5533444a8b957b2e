"""OpenRLHF: a remote reward model URL backed by a generative reward model, no GPU, no model."""

import httpx

from grm_plugin.testing import FaultKind, assert_group_rewards


def test_openrlhf_remote_reward_model(grm_judge_server, grm_reward_server):
    prompt, answers = "What is 2+2?", ["4", "The answer is 4."]  # grm_reward_server: the URL
    body = {"query": [prompt + a for a in answers], "prompts": [prompt] * 2, "labels": ["4"] * 2}
    out = httpx.post(grm_reward_server, json=body, timeout=60).json()  # as --reward.remote_url
    assert_group_rewards(out["rewards"], answers)  # the judge's rule, read back from its prompt
    grm_judge_server.faults.inject(FaultKind.RATE_LIMIT, times=100)  # the judge is overloaded
    body["query"] = [prompt + a for a in ["5", "five"]]  # new answers (judgments are cached)
    out = httpx.post(grm_reward_server, json=body, timeout=60).json()
    assert out["extra_logs"]["grm_failed"] == [1, 1]  # flagged, never an HTTP error
