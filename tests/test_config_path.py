"""One config path (issue 18): one coercion into a JudgeConfig, one YAML/JSON reader, the policy
nested as ``policy:`` in every adapter's settings, the demo judge's engine config derived from
the transformers one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from grm_plugin.adapters.openrlhf import OpenRLHFProtocol, load_plugin_config
from grm_plugin.adapters.trl import GRMReward
from grm_plugin.cli.engine_args import judge_config_from_args
from grm_plugin.cli.main import build_parser
from grm_plugin.cli.serve import apply_batching, protocol_overrides
from grm_plugin.config import (
    DefaultEngineConfig,
    JudgeConfig,
    LocalModelOptions,
    TransformersEngineConfig,
    load_mapping,
)
from grm_plugin.policy import RewardPolicy
from grm_plugin.server import plugin_sections
from grm_plugin.spct.config import SPCTConfig
from grm_plugin.testing import RuleJudgeEngine

ROOT = Path(__file__).resolve().parents[1]
JUDGE = {"sampling": {"samples": 3}, "engine": {"type": "openai", "base_url": "http://h:1/v1"}}


# ------------------------------------------------------------------------------ one coercion


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_coerce_reads_a_path_as_str_or_path(tmp_path, suffix):
    path = tmp_path / f"judge{suffix}"
    path.write_text(json.dumps(JUDGE) if suffix == ".json" else yaml.safe_dump(JUDGE))
    for given in (path, str(path)):
        assert JudgeConfig.coerce(given) == JudgeConfig.model_validate(JUDGE)


def test_coerce_takes_a_dict_a_model_or_none():
    cfg = JudgeConfig.coerce(JUDGE)
    assert cfg.sampling.samples == 3
    assert JudgeConfig.coerce(cfg) is cfg
    assert JudgeConfig.coerce(None) == JudgeConfig()
    with pytest.raises(TypeError, match="not int"):
        JudgeConfig.coerce(5)  # type: ignore[arg-type]


def test_load_mapping_refuses_a_missing_file_and_a_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="judge config not found"):
        load_mapping(tmp_path / "nope.yaml", what="judge config")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping, not list"):
        load_mapping(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_mapping(empty) == {}


def test_every_config_reader_refuses_a_non_mapping_the_same_way(tmp_path):
    """The judge file of the CLI, the plugin file of serve/OpenRLHF, the SPCT file and trl's
    config all go through load_mapping: one message for the same mistake."""
    listed = tmp_path / "list.yaml"
    listed.write_text("- engine\n")
    args = build_parser().parse_args(["serve", "--config", str(listed)])
    readers = [
        lambda: judge_config_from_args(args),
        lambda: plugin_sections(listed, "openrlhf"),
        lambda: load_plugin_config(listed),
        lambda: SPCTConfig.load(listed),
        lambda: GRMReward(listed),
    ]
    for read in readers:
        with pytest.raises(ValueError, match="top level must be a mapping, not list"):
            read()


def test_no_module_reads_config_files_on_its_own():
    """yaml is parsed in one place (load_mapping); the audit battery reads a data file."""
    allowed = {"grm_plugin/config.py", "grm_plugin/audit/battery.py"}
    readers = {
        str(p.relative_to(ROOT))
        for folder in ("grm_plugin", "adapters")
        for p in (ROOT / folder).rglob("*.py")
        if re.search(r"yaml\.(safe_)?load\(", p.read_text())
    }
    assert readers <= allowed, readers - allowed


def test_plugin_sections_take_a_dict_or_a_path_and_nothing_else(tmp_path):
    path = tmp_path / "grm.json"
    path.write_text(json.dumps({"judge": JUDGE, "openrlhf": {"policy": {"scale": "raw"}}}))
    judge, section, server = plugin_sections(path, "openrlhf")
    assert (judge.sampling.samples, section, server) == (3, {"policy": {"scale": "raw"}}, {})
    assert plugin_sections(JUDGE, "openrlhf")[0] == JudgeConfig.model_validate(JUDGE)
    with pytest.raises(TypeError, match="plugin config"):
        plugin_sections(5, "openrlhf")  # type: ignore[arg-type]


def test_trl_coerces_its_config_at_construction():
    assert GRMReward(JUDGE).config == JudgeConfig.model_validate(JUDGE)
    with pytest.raises(TypeError, match="judge config"):
        GRMReward(5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- policy: nested


def test_trl_takes_the_policy_nested():
    reward = GRMReward(engine=RuleJudgeEngine(), policy={"scale": "raw", "fallback": 0.5})
    assert reward.policy == RewardPolicy(scale="raw", fallback=0.5)


def test_openrlhf_file_takes_the_policy_nested(tmp_path):
    path = tmp_path / "grm.yaml"
    path.write_text(
        yaml.safe_dump({"openrlhf": {"policy": {"on_failure": "fallback", "fallback": 0.0}}})
    )
    _, settings, _ = load_plugin_config(path)
    assert (settings.policy.on_failure, settings.policy.fallback) == ("fallback", 0.0)


def test_openrlhf_refuses_flat_policy_keys_in_the_section_and_in_overrides():
    """One shape for the policy: ``policy: {...}``, never ``policy.<field>`` keys."""
    with pytest.raises(ValidationError):
        OpenRLHFProtocol.from_section({"policy.scale": "raw"})
    with pytest.raises(ValidationError):
        OpenRLHFProtocol.from_section({}, {"policy.scale": "raw"})


def test_serve_policy_flags_are_a_nested_policy_merged_into_the_section(tmp_path):
    """What ``grm-plugin serve --config grm.yaml --reward-scale raw`` builds: the file's
    ``openrlhf: {policy: ...}`` with the flags' fields replacing its fields one by one."""
    path = tmp_path / "grm.yaml"
    path.write_text(yaml.safe_dump({"openrlhf": {"policy": {"fallback": 0.1, "empty": 2.0}}}))
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--reward-scale", "raw", "--on-failure", "fallback"]
    )
    overrides = protocol_overrides(args)
    assert overrides == {"policy": {"scale": "raw", "on_failure": "fallback"}}
    _, section, _ = plugin_sections(args.config, "openrlhf")
    policy = OpenRLHFProtocol.from_section(section, overrides).policy
    assert policy == RewardPolicy(scale="raw", on_failure="fallback", fallback=0.1, empty=2.0)


# ---------------------------------------------------------------- the demo judge's engine


def test_default_engine_has_every_transformers_option():
    local = TransformersEngineConfig.model_fields.keys() - {"type", "model"}
    assert DefaultEngineConfig.model_fields.keys() - {"type"} == local
    assert issubclass(DefaultEngineConfig, LocalModelOptions)
    assert not issubclass(DefaultEngineConfig, TransformersEngineConfig)  # no model of its own
    # only the CPU-demo levers differ from the transformers defaults
    plain = TransformersEngineConfig(model="m").model_dump(exclude={"type", "model"})
    demo = DefaultEngineConfig().model_dump(exclude={"type"})
    assert {k for k in local if plain[k] != demo[k]} == {
        "quantize",
        "max_new_tokens",
        "constrain_scores",
    }


def test_default_engine_passes_every_option_to_the_transformers_engine():
    cfg = DefaultEngineConfig(batch_wait=0.2, context_window=4096, dtype="float32", batch_size=3)
    t = cfg.transformers_config("/models/demo")
    assert t.model_dump(exclude={"type", "model"}) == cfg.model_dump(exclude={"type"})


def test_serve_batch_size_applies_to_the_demo_judge(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["serve", "--batch-size", "4", "--batch-wait", "0.05"])
    engine = apply_batching(args, judge_config_from_args(args)).engine
    assert isinstance(engine, DefaultEngineConfig)
    assert (engine.batch_size, engine.batch_wait, engine.quantize) == (4, 0.05, "int8")
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({"engine": {"type": "default", "quantize": "none"}}))
    args = parser.parse_args(["serve", "--config", str(path), "--batch-size", "2"])
    engine = apply_batching(args, judge_config_from_args(args)).engine
    assert (engine.type, engine.batch_size, engine.quantize) == ("default", 2, "none")
    args = parser.parse_args(["serve", "--batch-size", "0"])
    with pytest.raises(ValidationError):  # validated as the file's value would be
        apply_batching(args, judge_config_from_args(args))
