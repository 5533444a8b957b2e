"""Expected scores: score positions from the parser, distributions from the transformers engine
(checked against the model's full logits), voting with them in the core and in evaluation."""

from __future__ import annotations

import asyncio
import math

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.config import TransformersEngineConfig
from grm_plugin.engines import JudgeEngine
from grm_plugin.engines.base import GenerationRequest
from grm_plugin.evaluation import EXPECTED, ItemDraw, evaluate
from grm_plugin.items import PreferenceItem
from grm_plugin.parsing import parse_judgment
from grm_plugin.results import JudgmentResult, Sample
from grm_plugin.score_distribution import ScoreDistribution, expected_in_original_order
from grm_plugin.testing import RuleJudgeEngine
from grm_plugin.testing.engines import shown_responses

from .tiny_model import build_tiny_model


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Analysis: x\n**Final Scores: [[7, 9.5]]**", ["7", "9.5"]),  # 10.5: off the scale
        ("a\r\nb\n\nFinal Scores: [[3; 1]]", ["3", "1"]),
        ("Analysis: y\nThe answer is \\boxed{2, 9}", ["2", "9"]),
        ("Final Scores: 4, 6", ["4", "6"]),
        # the same numbers earlier in the text are not the verdict's positions
        ("Response 1 gets [[7, 10]] in my head.\nFinal Scores: [[7, 10]]", ["7", "10"]),
    ],
)
def test_the_parser_gives_where_each_score_starts(text: str, numbers: list[str]) -> None:
    p = parse_judgment(text, 2)
    assert p.score_starts is not None
    assert [text[i : i + len(n)] for i, n in zip(p.score_starts, numbers, strict=True)] == numbers
    assert all(i > text.rfind("\n") for i in p.score_starts)  # on the last line
    assert parse_judgment("Final Scores: [[7]]", 2).score_starts is None


def test_a_prefix_value_loses_the_mass_of_its_longer_values() -> None:
    conts = {str(v): (v,) for v in range(1, 10)} | {"10": (1, 0)}
    lp = {v: math.log(0.01) for v in conts} | {"1": math.log(0.6), "10": math.log(0.45)}
    d = ScoreDistribution.from_candidates(lp, conts)
    assert d.probs[1] == pytest.approx(0.15) and d.probs[10] == pytest.approx(0.45)
    assert d.expected() == pytest.approx((0.15 + 4.5 + 0.01 * sum(range(2, 10))) / d.mass)
    # little mass on the values: the judge meant to write something else here
    assert ScoreDistribution({v: 0.03 for v in range(1, 11)}).expected() is None
    dists = [ScoreDistribution({3: 1.0}), None]
    assert expected_in_original_order(dists, [1, 0]) == [None, 3.0]


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from grm_plugin.engines.transformers_engine import TransformersEngine

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    engine = TransformersEngine(TransformersEngineConfig(model=str(folder), device="cpu"))
    yield engine
    asyncio.run(engine.aclose())


def _sequence_probability(engine, prefix: str, value: str) -> float:
    """P(value's tokens | prefix) from the model's full logits, tokenizing prefix + value."""
    import torch

    tok = engine.tokenizer
    ids = tok(prefix + value, add_special_tokens=False)["input_ids"]
    pre = tok(prefix, add_special_tokens=False)["input_ids"]
    common = next((i for i in range(len(pre)) if pre[i] != ids[i]), len(pre))
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    return math.exp(sum(logp[j - 1, ids[j]].item() for j in range(common, len(ids))))


def test_transformers_distributions_match_the_models_full_logits(tiny_engine) -> None:
    messages = [{"role": "user", "content": "Evaluate the responses"}]
    text = "Analysis: ok\nFinal Scores: [[7, 10]]"
    starts = parse_judgment(text, 2).score_starts
    dists = asyncio.run(tiny_engine.score_distributions(messages, text, starts))
    prompt = tiny_engine._render(GenerationRequest(messages))
    tok = tiny_engine.tokenizer
    merged = []
    for start, d in zip(starts, dists, strict=True):
        assert d is not None
        prefix = prompt + text[:start]
        p1, p10 = (_sequence_probability(tiny_engine, prefix, v) for v in ("1", "10"))
        ids10 = tok(prefix + "10", add_special_tokens=False)["input_ids"]
        ids1 = tok(prefix + "1", add_special_tokens=False)["input_ids"]
        one_extends = ids10[: len(ids1)] == ids1
        merged.append(not one_extends)
        # "1" then "0" is "10", not "1": only when "10" is "1" plus more tokens
        assert d.probs[1] == pytest.approx(p1 - p10 if one_extends else p1, rel=1e-4, abs=1e-9)
        assert d.probs[10] == pytest.approx(p10, rel=1e-4)
        for v in range(2, 10):
            assert d.probs[v] == pytest.approx(
                _sequence_probability(tiny_engine, prefix, str(v)), rel=1e-4
            )
        assert 0 < d.mass <= 1
    # the tiny tokenizer writes "[[1" "0" digit by digit but merges " 10" after the comma: both
    # kinds of boundary are covered
    assert merged == [False, True]


class _DistributionEngine(RuleJudgeEngine):
    """The rule judge, plus fixed distributions: every score position gets ``probs``."""

    supports_score_distributions = True

    def __init__(self, probs: dict[int, float], fail: bool = False) -> None:
        super().__init__(lambda r: 5.0)  # every response the same score: a tie
        self.probs = probs
        self.fail = fail
        self.asked: list[tuple[str, list[int]]] = []

    async def score_distributions(self, messages, text, starts):
        if self.fail:
            raise RuntimeError("scoring forward failed")
        self.asked.append((text, list(starts)))
        shown = shown_responses(GenerationRequest(messages))
        # a response's distribution leans to its length: the longer, the higher
        return [ScoreDistribution({5: 0.6, 9 if len(r) > 3 else 1: 0.4}) for r in shown][
            : len(starts)
        ]


def test_the_core_votes_with_expected_scores_and_breaks_the_tie() -> None:
    eng = _DistributionEngine({})
    rm = GenerativeRewardFn(eng, samples=2, expected_scores=True, seed=0)
    res = rm.score("Say hi", ["hi", "hello there"])
    assert [s.scores for s in res.samples] == [[5.0, 5.0]] * 2
    assert res.scores == pytest.approx([3.4, 6.6])  # 0.6*5 + 0.4*1, 0.6*5 + 0.4*9
    assert all(s.expected_scores == pytest.approx([3.4, 6.6]) for s in res.samples)
    assert len(eng.asked) == 2 and all(len(st) == 2 for _, st in eng.asked)
    plain = GenerativeRewardFn(_DistributionEngine({}), samples=2, seed=0)
    assert plain.score("Say hi", ["hi", "hello there"]).scores == [5.0, 5.0]


def test_a_failed_distribution_leaves_the_parsed_scores_voting() -> None:
    rm = GenerativeRewardFn(_DistributionEngine({}, fail=True), samples=2, expected_scores=True)
    res = rm.score("Say hi", ["hi", "hello there"])
    assert res.scores == [5.0, 5.0] and not res.failed
    assert all(s.expected_scores is None for s in res.samples)


def test_expected_scores_need_an_engine_that_gives_distributions() -> None:
    with pytest.raises(ValueError, match="RuleJudgeEngine does not: it has no score_dist"):
        GenerativeRewardFn(RuleJudgeEngine(), expected_scores=True)
    with pytest.raises(ValueError, match="score distributions"):
        GenerativeRewardFn.from_config(
            {"sampling": {"expected_scores": True}}, engine=RuleJudgeEngine()
        )

    class Bare(JudgeEngine):
        async def generate(self, request):
            return ["Final Scores: [[5]]"] * request.n

    with pytest.raises(NotImplementedError):
        asyncio.run(Bare().score_distributions([], "Final Scores: [[5]]", [15]))


def test_an_int8_judge_refuses_expected_scores(tiny_engine, tmp_path) -> None:
    from grm_plugin.engines.transformers_engine import TransformersEngine

    folder = tiny_engine.config.model
    int8 = TransformersEngine(TransformersEngineConfig(model=folder, quantize="int8", device="cpu"))
    assert tiny_engine.supports_score_distributions and not int8.supports_score_distributions
    with pytest.raises(ValueError, match="quantize='int8'.*use quantize: none"):
        GenerativeRewardFn(int8, expected_scores=True)
    asyncio.run(int8.aclose())


def _draw(expected: list[list[float | None]], best: int) -> ItemDraw:
    samples = [
        Sample(text="t", scores=[5.0, 5.0], order=[0, 1], expected_scores=e) for e in expected
    ]
    item = PreferenceItem(id=f"i{best}{expected}", prompt="p", responses=["a", "b"], best=best)
    return ItemDraw(item=item, result=JudgmentResult(samples=samples))


def test_evaluation_reports_expected_voting_on_the_same_samples() -> None:
    draws = [_draw([[4.0, 6.0], [5.0, 5.5]], 1), _draw([[6.5, 4.0], [None, 5.0]], 0)]
    report = evaluate(draws, ks=[1, 2])
    voting, expected = report.methods["voting"], report.methods[EXPECTED]
    assert [p.tie_rate for p in voting] == [1.0, 1.0]
    assert [p.tie_rate for p in expected] == [0.0, 0.0]
    assert [p.accuracy for p in expected] == [1.0, 1.0]
    # without expected scores on every valid sample the method is not reported
    bare = [_draw([None, None], 0)]
    assert EXPECTED not in evaluate(bare, ks=[1]).methods


def test_cli_eval_expected_scores_on_the_same_draw(tmp_path, monkeypatch, capsys) -> None:
    import json

    import grm_plugin.reward as reward
    from grm_plugin.cli.main import main

    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "responses": ["hi", "hello there"], "best": 1} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(reward, "make_engine", lambda spec: _DistributionEngine({}))
    out = tmp_path / "out"
    # eval refuses --expected-scores for an int8 judge (the default) before loading it
    judge = tmp_path / "judge.yaml"
    judge.write_text("engine: {type: default, quantize: none}\n")
    argv = ["eval", str(data), "--samples", "1,2", "--no-progress", "--config", str(judge)]
    argv.append("--expected-scores")
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [p["tie_rate"] for p in report["methods"]["voting"]] == [1.0, 1.0]
    assert [p["accuracy"] for p in report["methods"][EXPECTED]] == [1.0, 1.0]
    assert report["config"]["judge"]["sampling"]["expected_scores"] is True
    # the saved draw keeps the expected scores: a reuse reports them without the judge
    monkeypatch.setattr(reward, "make_engine", lambda spec: pytest.fail("judge was called"))
    reuse = ["--reuse-samples", str(out / "samples.jsonl")]
    assert main([*argv, *reuse, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["methods"] == report["methods"]
    # a draw made without them cannot have them added afterwards
    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine())
    plain = argv[:-1]
    assert main([*plain, "--out", str(tmp_path / "plain")]) == 0
    reuse = ["--reuse-samples", str(tmp_path / "plain" / "samples.jsonl")]
    capsys.readouterr()
    assert main([*argv, *reuse, "--out", str(tmp_path / "x")]) == 2
    assert "needs a draw made with it" in capsys.readouterr().err
