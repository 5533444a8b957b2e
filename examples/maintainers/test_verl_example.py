"""verl: the custom reward function backed by a generative reward model, no GPU, no model."""

import asyncio

from grm_plugin.adapters.verl import compute_score
from grm_plugin.testing import FaultKind, assert_group_rewards


def test_verl_custom_reward_function(grm_judge_server, grm_judge_config_file, monkeypatch):
    monkeypatch.setenv("GRM_PLUGIN_CONFIG", str(grm_judge_config_file))  # as verl's workers see it
    answers, info = ["4", "The answer is 4."], {"question": "What is 2+2?"}
    outs = [asyncio.run(compute_score("gsm8k", a, "4", info)) for a in answers]
    assert_group_rewards(outs, answers)  # compares each out["score"] with the judge's rule
    grm_judge_server.faults.inject(FaultKind.DROP, times=100)  # the judge drops every request
    out = asyncio.run(compute_score("gsm8k", "5", "4", info))  # (a new answer: not cached)
    assert out["grm_failed"] == 1 and 0.0 <= out["score"] <= 1.0  # a fallback, never a raise
