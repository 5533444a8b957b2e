"""The conftest closes every local engine a real-model test builds (their batcher threads
would keep each model alive for the rest of the run). A tiny model stands in: what is checked
is the fixture, not a judge. Marked real_model because the fixture acts on those tests only."""

from pathlib import Path

import pytest

from grm_plugin.config import TransformersEngineConfig
from grm_plugin.engines.transformers_engine import TransformersEngine

from .tiny_model import build_tiny_model

_left_open: list[TransformersEngine] = []


@pytest.mark.real_model
def test_a_real_model_test_leaves_its_engine_open(tmp_path: Path) -> None:
    engine = TransformersEngine(TransformersEngineConfig(model=str(build_tiny_model(tmp_path))))
    assert engine.health().ok
    _left_open.append(engine)


@pytest.mark.real_model
def test_the_fixture_closed_it() -> None:
    if not _left_open:
        pytest.skip("the first test did not run")
    health = _left_open.pop().health()
    assert not health.ok and health.reason == "engine closed"
