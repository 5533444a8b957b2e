"""The judge config shown in the README loads as written (every key is a real key)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.testing import RuleJudgeEngine

README = Path(__file__).resolve().parents[1] / "README.md"


class _DistributionRuleJudge(RuleJudgeEngine):
    # stands in for the transformers engine that a config with expected_scores needs
    supports_score_distributions = True


def _judge_yaml_blocks() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if b.startswith("# judge.yaml")]


def test_readme_judge_yaml_loads(tmp_path):
    blocks = _judge_yaml_blocks()
    assert blocks, "the README shows no judge.yaml"
    for block in blocks:
        cfg = JudgeConfig.model_validate(yaml.safe_load(block))
        path = tmp_path / "judge.yaml"
        path.write_text(block)
        engine = _DistributionRuleJudge() if cfg.sampling.expected_scores else RuleJudgeEngine()
        rm = GenerativeRewardFn.from_config(path, engine=engine)
        assert rm.deadline == cfg.deadline


def test_readme_spct_config_keys_are_real() -> None:
    """Every `section.key` or `section.key: value` the README's SPCT prose names is a key of
    the spct.yaml sections, and a value shown with it validates."""
    from grm_plugin.spct import SPCTConfig

    # the judge section is a judge.yaml, checked above; `judge.yaml` is a file name
    sections = "|".join(k for k in SPCTConfig.model_fields if k != "judge")
    found = re.findall(rf"`({sections})\.(\w+)(?:: ([^`]+))?`", README.read_text())
    assert len(found) >= 10, found
    for section, key, value in found:
        settings = SPCTConfig.model_fields[section].annotation
        assert key in settings.model_fields, f"README names {section}.{key}: no such key"
        if value:
            SPCTConfig.model_validate({section: {key: yaml.safe_load(value)}})
