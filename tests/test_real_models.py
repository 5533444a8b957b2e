"""Real judges: the embedded default (Qwen2.5-Coder-0.5B) and the openai engine against a real
`transformers serve` process. Slow: run with `pytest -m real_model` (its own CI step)."""

import pytest

from grm_plugin import FailureKind, GenerativeRewardFn, OpenAIEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.engines.openai_engine import OpenAIEngine
from grm_plugin.reward import run_sync

from .openai_fakes import smollm2_folder, start_transformers_serve

pytestmark = pytest.mark.real_model


def test_default_judge_really_judges():
    rm = GenerativeRewardFn(None, samples=2, max_new_tokens=512, parse_retries=2, seed=0)
    res = rm.score(
        "What is the capital of France? Answer in one sentence.",
        ["The capital of France is Paris.", "The capital of France is Berlin."],
    )
    assert res.samples and all(s.text for s in res.samples if s.failure is None)
    assert not res.failed, res.error
    assert all(1.0 <= s <= 10.0 for s in res.scores)
    voted = [s for s in res.samples if s.voted]
    assert voted and all(s.critique or s.principles for s in voted)


@pytest.fixture(scope="module")
def transformers_server():
    folder = smollm2_folder()
    proc, root = start_transformers_serve(folder)
    yield f"{root}/v1", str(folder)
    proc.terminate()
    proc.wait(30)


def test_openai_engine_against_transformers_serve(transformers_server):
    url, model = transformers_server
    eng = OpenAIEngine(OpenAIEngineConfig(base_url=url, model=model))
    texts = run_sync(
        eng.generate(
            GenerationRequest(
                [{"role": "user", "content": "Say hello."}],
                n=2,
                temperature=0.7,
                max_tokens=12,
                request_timeout=120,
            )
        )
    )
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    # transformers serve answers n=2 with one choice: the engine noticed and went parallel
    assert eng._native_n is False

    rm = GenerativeRewardFn(eng, samples=2, max_new_tokens=24, parse_retries=0)
    res = rm.score("What is 2 + 2?", ["4", "5"])
    assert len(res.samples) == 2 and all(s.text for s in res.samples)
    # SmolLM2 never writes the score format: a flagged None, not a zero
    if res.failed:
        assert res.scores == [None, None]
        assert all(s.failure_kind is FailureKind.PARSE for s in res.samples)
