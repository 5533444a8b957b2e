"""Accuracy against k: subsampling one draw, voting vs meta-RM voting, ties, position bias, and
the report files (JSON, markdown, PNG)."""

from __future__ import annotations

import json

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.cli.main import main
from grm_plugin.evaluation import (
    ItemDraw,
    add_meta_scores,
    draw,
    draw_sequence,
    evaluate,
    markdown_table,
    read_draws,
    records_from_draws,
    samples_at_k,
    wilson_interval,
    write_draws,
    write_report,
)
from grm_plugin.items import PreferenceItem
from grm_plugin.results import JudgmentResult, Sample
from grm_plugin.testing import RuleJudgeEngine

from .meta_rm_fakes import items, marker_score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(scores, order=(0, 1), meta=None, attempt=0, failure=None) -> Sample:
    return Sample(
        text="Final Scores: [[x]]",
        scores=None if scores is None else [float(s) for s in scores],
        order=list(order),
        meta_score=meta,
        attempt=attempt,
        failure=failure,
    )


def _draw(item_id: str, best: int, samples: list[Sample]) -> ItemDraw:
    item = PreferenceItem(id=item_id, prompt="q", responses=["a", "b"], best=best)
    return ItemDraw(item=item, result=JudgmentResult(samples=samples))


def test_levels_use_the_first_k_samples_of_one_draw():
    # sample 0 is right, the next three are wrong: k=1 right, k=2 tie, k=4 wrong
    d = _draw("i", 0, [_sample([9, 1]), _sample([1, 9]), _sample([4, 6]), _sample([4, 6])])
    report = evaluate([d], [1, 2, 4], methods=["voting"])
    acc = [p.accuracy for p in report.methods["voting"]]
    ties = [p.tie_rate for p in report.methods["voting"]]
    assert acc[0] == 1.0 and acc[2] == 0.0
    assert ties == [0.0, 1.0, 0.0]


def test_draw_calls_the_judge_once_for_max_k_with_balanced_orders():
    engine = RuleJudgeEngine(marker_score)
    rm = GenerativeRewardFn(engine, samples=4, seed=0, parse_retries=0)
    draws = draw(rm, items(3, 1, 0), progress=False)
    assert sum(r.n for r in engine.requests) == 4 * 4  # 4 items x max k, nothing more
    for d in draws:
        orders = [tuple(s.order) for s in d.result.samples]
        assert draw_sequence(d.result.samples) == d.result.samples  # the core's own order
        assert sorted(orders[:2]) == [(0, 1), (1, 0)]  # alternating: even prefixes balanced
        assert orders[:2] == orders[2:]
    report = evaluate(draws, [1, 2, 4])
    assert report.methods["voting"][0].n == 4
    assert [p.correct for p in report.methods["voting"]] == [3, 3, 3]


def test_too_few_samples_for_the_largest_k_is_an_error():
    d = _draw("i", 0, [_sample([9, 1])])
    with pytest.raises(ValueError, match="fewer than k=2"):
        evaluate([d], [1, 2])


def test_draw_sequence_interleaves_draws_saved_grouped_by_order():
    a, b = (0, 1), (1, 0)
    grouped = [_sample([9, 1], a), _sample([8, 1], a), _sample([1, 9], b), _sample([1, 8], b)]
    seq = draw_sequence(grouped)
    assert [tuple(s.order) for s in seq] == [a, b, a, b]
    assert seq == [grouped[0], grouped[2], grouped[1], grouped[3]]


def test_retries_fill_only_the_failures_of_the_level():
    fail = dict(failure="parse: no scores")
    samples = [
        _sample([9, 1]),
        _sample(None, **fail),
        _sample([1, 9]),
        _sample([1, 9]),
        _sample([8, 2], attempt=1),
        _sample([7, 3], attempt=1),
    ]
    assert len(samples_at_k(samples, 2, parse_retries=0)) == 2
    picked = samples_at_k(samples, 2, parse_retries=2)
    assert picked == samples[:2] + samples[4:5]  # one failure, replaced by the first valid retry
    assert samples_at_k(samples, 1, parse_retries=2) == samples[:1]  # no failure at k=1


def test_strict_accuracy_counts_ties_as_wrong_and_reports_the_coin_flips_apart():
    # issue 21 item 25: a tie was a coin flip counted in the headline accuracy
    draws = [_draw(f"t{i}", i % 2, [_sample([5, 5]), _sample([5, 5])]) for i in range(60)]
    a = evaluate(draws, [1, 2], seed=7)
    assert a == evaluate(draws, [1, 2], seed=7)
    for p in a.methods["voting"]:
        assert p.tie_rate == 1.0
        assert (p.correct, p.accuracy) == (0, 0.0)  # strict: a tie is wrong
        assert (p.ci95_low, p.acc_best_first, p.acc_best_second) == (0.0, 0.0, 0.0)
        assert 0 < p.correct_tie_broken < 60  # coin flips, labeled as such
        assert p.accuracy_tie_broken == p.correct_tie_broken / 60
    md = markdown_table(a)
    assert "| voting | 1 | 60 | 0.0 |" in md and "tie-broken" in md


def test_items_without_a_valid_sample_are_wrong_not_a_random_pick():
    fail = dict(failure="parse: no scores")
    draws = [_draw(f"f{i}", 0, [_sample(None, **fail)]) for i in range(40)]
    p = evaluate(draws, [1]).methods["voting"][0]
    assert p.no_vote_rate == 1.0 and p.correct == 0 and p.accuracy == 0.0
    assert 0 < p.correct_tie_broken < 40  # the old random pick, only in the labeled figure
    assert evaluate(draws, [1]).levels[0].parse_failure_rate == 1.0


def test_strict_headline_and_subsets_use_strict_accuracy():
    tie, right = [_sample([5, 5])], [_sample([9, 1])]
    draws = [_draw("r", 0, right), *(_draw(f"t{i}", i % 2, tie) for i in range(9))]
    report = evaluate(draws, [1])
    assert report.methods["voting"][0].correct == 1
    assert report.headline["voting"][0].accuracy == pytest.approx(0.1)


def test_meta_rm_voting_keeps_the_best_rated_half():
    samples = [
        _sample([9, 1], meta=0.9),
        _sample([3, 7], meta=0.5),
        _sample([3, 7], meta=0.1),
        _sample([3, 7], meta=0.2),
    ]
    report = evaluate([_draw("m", 0, samples)], [1, 2, 4])
    assert set(report.methods) == {"voting", "meta_rm_voting"}
    voting = [p.accuracy for p in report.methods["voting"]]
    meta = [p.accuracy for p in report.methods["meta_rm_voting"]]
    assert voting == [1.0, 1.0, 0.0]  # k=4: 18 vs 22 for the wrong response
    assert meta == [1.0, 1.0, 1.0]  # k=4 keeps samples 0 and 1: 12 vs 8


def test_meta_method_needs_meta_scores_everywhere():
    d1 = _draw("a", 0, [_sample([9, 1], meta=0.3)])
    d2 = _draw("b", 0, [_sample([9, 1])])
    assert set(evaluate([d1, d2], [1]).methods) == {"voting"}


def test_add_meta_scores_passes_shown_order():
    seen = []

    class Recorder:
        def score_judgments(self, prompt, shown, judgments):
            seen.append(shown)
            return [float(len(s[0])) for s in shown]

    item = PreferenceItem(id="i", prompt="q", responses=["a", "bbb"], best=1)
    d = ItemDraw(
        item=item,
        result=JudgmentResult(
            samples=[_sample([1, 9], order=(1, 0)), _sample(None, failure="parse: x")]
        ),
    )
    add_meta_scores([d], Recorder(), progress=False)
    assert seen == [[["bbb", "a"]]]  # only the valid sample, responses as the judge saw them
    assert d.result.samples[0].meta_score == 3.0 and d.result.samples[1].meta_score is None


def test_position_bias_split_by_original_best_index():
    # the judge always prefers the GOOD text, which is response 0 in every item: right when
    # best=0, wrong when best=1
    data = [
        PreferenceItem(id=f"x{i}", prompt="q", responses=["GOOD a", "BAD b"], best=i % 2)
        for i in range(6)
    ]
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=2, seed=0, parse_retries=0)
    p = evaluate(draw(rm, data, progress=False), [1, 2]).methods["voting"][1]
    assert (p.n_best_first, p.n_best_second) == (3, 3)
    assert p.acc_best_first == 1.0 and p.acc_best_second == 0.0
    assert p.accuracy == 0.5


def test_wilson_interval_and_standard_error():
    lo, hi = wilson_interval(30, 60)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    d = [_draw(f"i{i}", 0, [_sample([9, 1] if i < 3 else [1, 9])]) for i in range(4)]
    p = evaluate(d, [1]).methods["voting"][0]
    assert p.accuracy == 0.75 and abs(p.se - (0.75 * 0.25 / 4) ** 0.5) < 1e-12


def test_report_files(tmp_path):
    samples = [_sample([9, 1], meta=0.9), _sample([1, 9], meta=0.1)]
    report = evaluate([_draw("a", 0, samples), _draw("b", 1, samples)], [1, 2])
    paths = write_report(report, tmp_path)
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    data = json.loads(paths["json"].read_text())
    assert data["ks"] == [1, 2] and set(data["methods"]) == {"voting", "meta_rm_voting"}
    md = paths["markdown"].read_text()
    assert md == markdown_table(report)
    assert "| meta RM voting | 2 | 2 |" in md and "parse failure rate" in md


def test_draws_round_trip_and_records(tmp_path):
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=2, seed=0, parse_retries=0)
    draws = draw(rm, items(1, 1, 1), progress=False)
    write_draws(draws, tmp_path / "s.jsonl")
    # compared as saved: samples also hold in-memory fields that are never written
    assert [d.model_dump() for d in read_draws(tmp_path / "s.jsonl")] == [
        d.model_dump() for d in draws
    ]
    recs = records_from_draws(draws)
    assert len(recs) == 6 and sum(r.label for r in recs) == 2


def test_cli_eval_end_to_end(tmp_path, monkeypatch):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in items(3, 2, 0)))
    out = tmp_path / "out"
    argv = ["eval", str(data), "--samples", "1,2,4", "--out", str(out), "--no-progress"]
    assert main([*argv, "--records", str(tmp_path / "rec.jsonl")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ks"] == [1, 2, 4] and report["n_items"] == 5
    assert [p["correct"] for p in report["methods"]["voting"]] == [3, 3, 3]
    assert report["config"]["judge"]["sampling"]["samples"] == 4
    assert (out / "accuracy_vs_k.png").read_bytes()[:8] == PNG_MAGIC
    assert len((tmp_path / "rec.jsonl").read_text().splitlines()) == 20
    # the saved draw evaluates again without the judge, to the same numbers
    monkeypatch.setattr(reward, "make_engine", lambda spec: pytest.fail("judge was called"))
    out2 = tmp_path / "out2"
    argv = ["eval", str(data), "--samples", "1,2,4", "--out", str(out2), "--no-progress"]
    assert main([*argv, "--reuse-samples", str(out / "samples.jsonl")]) == 0
    again = json.loads((out2 / "report.json").read_text())
    assert again["methods"] == report["methods"]


def test_cli_eval_rejects_bad_k_list(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "d.jsonl"), "--samples", "0,2"])


def test_adaptive_k_stops_when_the_leader_cannot_be_overtaken():
    from grm_plugin.adaptive import AdaptiveRule

    clear = [_sample([10, 1])] * 4  # gap 9 per sample: after 3 samples 27 > 9 left
    split = [_sample([9, 1]), _sample([1, 9]), _sample([9, 1]), _sample([9, 1])]
    draws = [_draw("clear", 0, clear), _draw("split", 0, split)]
    report = evaluate(draws, [4], methods=["voting"], adaptive=AdaptiveRule(k_max=4))
    fixed, adaptive = report.methods["voting"][0], report.methods["adaptive"][0]
    assert adaptive.samples_used_per_item == (3 + 4) / 2
    assert fixed.samples_used_per_item == 4
    assert adaptive.correct == fixed.correct == 2
    agree = evaluate(draws, [4], methods=["voting"], adaptive=AdaptiveRule(k_max=4, agreement=2))
    # 'clear' agrees after 2; 'split' disagrees at 2, then samples 3 and 4 agree
    assert agree.methods["adaptive"][0].samples_used_per_item == (2 + 4) / 2
    assert "adaptive k" in markdown_table(agree)
    with pytest.raises(ValueError, match="exceeds the draw"):
        evaluate(draws, [2], adaptive=AdaptiveRule(k_max=4))
