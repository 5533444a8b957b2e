"""The pytest plugin (``pytest11`` entry point): fixtures and group-reward assertions.

The fixtures are used here directly (this session loads the plugin through its entry point), and
a fresh pytest process run outside the repository checks what a maintainer's project gets.
``grm_reward_server`` (a ``grm-plugin serve`` child process) is exercised by the OpenRLHF
maintainers' example in ``nox -s openrlhf``.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.testing import (
    FaultKind,
    RuleJudgeEngine,
    SimServer,
    assert_group_rewards,
    expected_rewards,
    length_score,
)

PROMPT, ANSWERS = "What is 2+2?", ["4", "four", "It is 4."]


def test_entry_point_is_declared() -> None:
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.value == "grm_plugin.testing.pytest_plugin" for ep in eps)


def test_plugin_is_loaded(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("grm_plugin")


def test_judge_server_fixture_scores_by_the_rule(grm_judge_server: SimServer) -> None:
    rm = GenerativeRewardFn(grm_judge_server.url, samples=2)
    res = rm.score(PROMPT, ANSWERS)
    assert_group_rewards(res.scores, ANSWERS, scale="raw")
    assert grm_judge_server.stats().samples == 2


def test_rule_engine_fixture(grm_rule_engine: RuleJudgeEngine) -> None:
    res = GenerativeRewardFn(grm_rule_engine, samples=1).score(PROMPT, ANSWERS)
    assert res.scores == [length_score(a) for a in ANSWERS]
    assert len(grm_rule_engine.requests) == 1


def test_factory_with_faults_and_another_rule(grm_judge_server_factory) -> None:
    server = grm_judge_server_factory(
        {"faults": {"rates": {"server_error": 0.2}, "seed": 1}}, score_fn=lambda r: 7.0
    )
    rm = GenerativeRewardFn(server.url, samples=1)
    results = rm.score_batch([f"Q{i}?" for i in range(20)], [ANSWERS] * 20)
    assert all(r.scores == [7.0] * 3 for r in results)  # every 500 was retried
    assert server.stats().faults.get("server_error", 0) > 0


def test_config_file_fixture(grm_judge_config_file: Path, grm_judge_server: SimServer) -> None:
    config = JudgeConfig.load(grm_judge_config_file)
    rm = GenerativeRewardFn.from_config(config)
    assert_group_rewards(rm.score(PROMPT, ANSWERS).scores, ANSWERS, scale="raw")
    grm_judge_server.faults.inject(FaultKind.SERVER_ERROR, times=10)  # down for this item
    failed = rm.score(PROMPT, ["5", "five"])
    assert failed.failed and failed.scores == [None, None]


def test_assert_group_rewards_names_every_wrong_entry() -> None:
    good = expected_rewards(ANSWERS)
    assert_group_rewards(good, ANSWERS)
    assert_group_rewards([{"score": s} for s in good], ANSWERS)  # verl's dicts
    with pytest.raises(AssertionError, match=r"(?s)at 2 of 3 .*\[0\] '4'.*\[2\] 'It is 4.'"):
        assert_group_rewards([0.5, good[1], None], ANSWERS)
    with pytest.raises(AssertionError, match="2 rewards for 3 completions"):
        assert_group_rewards(good[:2], ANSWERS)
    assert_group_rewards([good[0], 0.0, good[2]], ANSWERS, failed=[1], fallback=0.0)


def test_a_maintainers_project_gets_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_theirs.py").write_text(
        textwrap.dedent(
            """
            from grm_plugin import GenerativeRewardFn
            from grm_plugin.testing import assert_group_rewards

            def test_ok(grm_judge_server):
                rm = GenerativeRewardFn(grm_judge_server.url, samples=1)
                assert_group_rewards(rm.score("Q", ["a", "bb"]).scores, ["a", "bb"], scale="raw")

            def test_wrong_expectation_fails(grm_judge_server):
                rm = GenerativeRewardFn(grm_judge_server.url, samples=1)
                assert_group_rewards(rm.score("Q", ["a", "bb"]).scores, ["bb", "a"], scale="raw")
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_theirs.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "group rewards differ from the judge's rule" in proc.stdout


def test_readme_shows_the_trl_example_as_it_is_tested() -> None:
    repo = Path(__file__).resolve().parents[1]
    example = (repo / "examples" / "maintainers" / "test_trl_example.py").read_text()
    code = example.split('"""', 2)[2].lstrip("\n")
    assert f"```python\n{code}```" in (repo / "README.md").read_text()
