"""Test doubles and a testing kit: engines that judge by a fixed rule, a simulated
continuous-batching judge server, and helpers to check what a reward function returned.

The engines read the responses back out of the real judge prompt, so a test that uses them still
runs the real prompt builder, parser, shuffling and voting. The pytest plugin
(``grm_plugin.testing.pytest_plugin``, loaded automatically when grm-plugin is installed) turns
them into fixtures.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=2)
    >>> rm.score("Say hi", ["hi", "hello there"]).scores
    [3.0, 10.0]
"""

from .asserts import assert_group_rewards, expected_rewards
from .capacity import CapacityModel
from .engines import (
    FailingEngine,
    RuleJudgeEngine,
    TextEngine,
    length_score,
    responses_in_prompt,
    rule_judgment,
    shown_responses,
)
from .faults import Fault, FaultKind, FaultPlan
from .hacks import (
    AnswerKeyJudgeEngine,
    HackCase,
    assert_judge_rejects,
    hack_cases,
    prefers_long_score,
)
from .router import (
    JudgeFleet,
    Router,
    RouterConfig,
    RouterKind,
    RouterPolicy,
    router_available,
)
from .sim_server import SimServer, SimServerConfig, SimServerProcess, SimStats

__all__ = [
    "AnswerKeyJudgeEngine",
    "HackCase",
    "JudgeFleet",
    "Router",
    "RouterConfig",
    "RouterKind",
    "RouterPolicy",
    "router_available",
    "assert_judge_rejects",
    "hack_cases",
    "prefers_long_score",
    "CapacityModel",
    "FailingEngine",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "RuleJudgeEngine",
    "SimServer",
    "SimServerConfig",
    "SimServerProcess",
    "SimStats",
    "TextEngine",
    "assert_group_rewards",
    "expected_rewards",
    "length_score",
    "responses_in_prompt",
    "rule_judgment",
    "shown_responses",
]
