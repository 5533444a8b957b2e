"""The reward's own work per item (issue 18, "the client at the floor"): no Jinja render per
item once its prompt's shape has a skeleton, no OS-seeded generator per unseeded item, no copy
of each result to set its votes. Checked by counting the work, never by timing it
(``benchmarks/client_floor.py`` measures the CPU); the texts stay the template's own."""

from __future__ import annotations

import asyncio
import multiprocessing
import random

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin import reward as reward_module
from grm_plugin.aggregator import Aggregator
from grm_plugin.deadline import NEVER
from grm_plugin.parsing import parse_judgment
from grm_plugin.results import JudgmentResult, Sample
from grm_plugin.sampler import PromptFrame
from grm_plugin.sync_bridge import run_sync
from grm_plugin.templates import TEMPLATES, JudgeTemplate, load_template
from grm_plugin.testing import RuleJudgeEngine
from grm_plugin.validation import triage_responses

from .test_reward_parts import _count_renders


def test_a_skeleton_is_rendered_once_per_shape(monkeypatch):
    rm = GenerativeRewardFn(RuleJudgeEngine())
    renders = _count_renders(monkeypatch)
    results = rm.score_batch([f"Q{i}" for i in range(20)], [["a", "bb"]] * 20)
    assert [r.scores for r in results] == [[2.0, 3.0]] * 20
    assert len(renders) == 1  # was one per item
    rm.score_batch(["Q"], [["a", "bb", "ccc"]])  # another response count: another shape
    assert len(renders) == 2


def _framed(t: JudgeTemplate, prompt, texts, principles=None, reference=None):
    """The messages a frame of ``t`` gives (None: no frame), beside ``t``'s own render."""
    frame = PromptFrame.build(t, prompt, len(texts), "abcd1234", principles, reference)
    rendered = t.render(prompt, texts, nonce="abcd1234", principles=principles, reference=reference)
    return (None if frame is None else frame.fill(texts)), rendered


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("reference", [None, "", "4 <|im_end|>"])
def test_a_skeletons_text_is_the_render(template, reference):
    t = load_template(template)
    assert t._plain_slots  # the presets take the skeleton: the check below is not vacuous
    for prompt in ["Hi", [{"role": "user", "content": "Hi <s>"}], "\ue000C\ue001 a stand-in"]:
        for texts in (["4"], ["", "a <|im_end|> b", "\ue0000\ue001 \ue000N\ue001"]):
            got, want = _framed(t, prompt, texts, principles="P", reference=reference)
            assert got == want


SOURCE = "{{ conversation%s }} {{ fence_code }}\n{%% for r in responses %%}{{ r.fenced }}\n{%% endfor %%}[[{{ score_slots }}]]"  # noqa: E501


@pytest.mark.parametrize("use", ["|length", "|upper", " ~ fence_code"])
def test_a_template_that_transforms_a_value_gets_no_skeleton(use):
    t = JudgeTemplate(SOURCE % use, name="t", version=1, origin="t")
    assert not t._plain_slots
    assert t.skeleton(2, None, False) is None
    assert _framed(t, "q", ["a", "b"])[0] is None


def test_a_template_that_shows_values_as_they_are_gets_one():
    t = JudgeTemplate("Judge. " + SOURCE % "", name="t", version=1, origin="t")
    assert t._plain_slots and t.skeleton(2, None, False) is not None
    got, want = _framed(t, "q", ["a", "b <|im_end|>"])
    assert got == want


def test_a_stand_in_at_either_end_of_a_message_gets_no_skeleton():
    # a render strips the message's own spaces; a join of the caller's text would keep them
    t = JudgeTemplate(SOURCE % "", name="t", version=1, origin="t")
    assert t._plain_slots and t.skeleton(2, None, False) is None
    assert _framed(t, " q ", ["a", "b"])[0] is None


def test_a_template_that_shows_a_response_twice_gets_no_skeleton():
    twice = "Judge. " + SOURCE.replace("{{ r.fenced }}", "{{ r.fenced }} {{ r.fenced }}") % ""
    t = JudgeTemplate(twice, name="t", version=1, origin="t")
    assert t._plain_slots and t.skeleton(2, None, False) is None


def test_a_rubric_holding_a_stand_in_gets_no_skeleton():
    t = load_template("grm-plugin")
    rubric = "weigh \ue000N\ue001 heavily"
    assert t.skeleton(2, rubric, False) is None
    assert _framed(t, "q", ["a", "b"], principles=rubric)[0] is None


def test_unseeded_items_share_one_generator():
    rm = GenerativeRewardFn(RuleJudgeEngine())
    first, _ = rm._item_randomness(1)
    second, _ = rm._item_randomness(2)
    assert first is second is reward_module._UNSEEDED  # was a new random.Random() per item


def _draw(queue) -> None:
    queue.put(reward_module._UNSEEDED.getrandbits(64))


def test_a_forked_child_draws_other_orders_than_its_parent():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_draw, args=(queue,))
    state = reward_module._UNSEEDED.getstate()
    child.start()
    drawn = queue.get(timeout=30)
    child.join(timeout=30)
    mine = random.Random()
    mine.setstate(state)
    assert drawn != mine.getrandbits(64)  # the child's generator was reseeded


def test_the_aggregators_result_carries_its_votes():
    agg = Aggregator(None, samples=4, expected_scores=False, meta_rm=None, keep=1)
    samples = [Sample(scores=[8.0], order=[0]) for _ in range(4)]
    triage = triage_responses(["a"], minimal_content=False)
    assert run_sync(agg.result(samples, triage, [None], "Q", ["a"], NEVER)).votes == 4
    with_meta = Aggregator(None, samples=4, expected_scores=False, meta_rm=object(), keep=1)  # type: ignore[arg-type]
    assert with_meta.votes == 1  # the meta RM's keep


def test_a_batchs_results_are_not_copied_to_set_their_votes(monkeypatch):
    copies: list[int] = []
    real = JudgmentResult.model_copy

    def counting(self, *args, **kwargs):
        copies.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JudgmentResult, "model_copy", counting)
    rm = GenerativeRewardFn(RuleJudgeEngine(), samples=2)
    results = rm.score_batch(["Q1", "Q2"], [["a", "bb"], ["c", "dd"]])
    assert [r.votes for r in results] == [2, 2]
    assert copies == []  # was one per result


def test_a_verdict_label_in_any_case_the_patterns_accept_still_parses():
    # the cheap pre-check before the verdict patterns must accept what they accept: re's
    # IGNORECASE takes the dotless i for an i, str.lower() would not
    assert parse_judgment("F\u0131nal Scores: [[7]]", 1).scores == [7.0]
    assert parse_judgment("F\u0131nal Scores: 7", 1).scores == [7.0]
    assert parse_judgment("Verdict: \\boxed{7}", 1).scores == [7.0]


class Waits(RuleJudgeEngine):
    """Says it runs 4 requests at once; records how many items were waiting on it at once."""

    max_in_flight = 4

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.most_waiting = 0

    async def generate(self, request):
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            for _ in range(3):  # let every admitted item reach the engine
                await asyncio.sleep(0)
            return await super().generate(request)
        finally:
            self.waiting -= 1


def test_a_batch_keeps_four_times_the_engines_requests_in_flight():
    # with 1024 items in flight for an engine that runs 64 requests, the garbage collector
    # walked ~1000 waiting items again and again
    engine = Waits()
    out = GenerativeRewardFn(engine).score_batch([f"Q{i}" for i in range(100)], [["a"]] * 100)
    assert all(r.scores == [2.0] for r in out)
    assert 4 < engine.most_waiting <= 16  # was all 100


def test_an_item_the_cache_would_pass_through_skips_it(monkeypatch):
    from grm_plugin.cache import JudgmentCache

    calls: list[int] = []
    real = JudgmentCache.judge

    async def counting(self, *args, **kwargs):
        calls.append(1)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(JudgmentCache, "judge", counting)
    rm = GenerativeRewardFn(RuleJudgeEngine())
    assert rm.score("Q", ["a", "bb"]).scores == [2.0, 3.0]
    assert calls == []  # was one per item: its lists, sets and dicts for nothing
    res = rm.score("Q", ["a", "a"])  # a copy: the cache judges it once and flags the copy
    assert res.scores == [2.0, 2.0] and res.flags[1] == ["duplicate"]
    assert calls == [1]


def test_the_usual_judgment_reads_its_verdict_line_only(monkeypatch):
    # every line was read as a verdict candidate and searched for score text, though the
    # verdict of a judgment is on its last line: a long judgment cost ~30 regex scans more
    from grm_plugin import parsing as parsing_module

    reads: list[int] = []
    real = parsing_module._verdict_of

    def counting(lines, i):
        reads.append(i)
        return real(lines, i)

    monkeypatch.setattr(parsing_module, "_verdict_of", counting)
    body = "\n".join(f"Response {i % 2 + 1} is fine, point {i}." for i in range(30))
    text = f"Specific Criteria: be right\nAnalysis:\n{body}\nFinal Scores: [[7, 3]]"
    assert parse_judgment(text, 2).scores == [7.0, 3.0]
    assert reads == [32]  # was all 33 lines
    # a strong verdict before a loose one still wins (the strongest kind, then the last)
    text = "Final Scores: [[7, 3]]\nFinal Scores: 1, 2"
    assert parse_judgment(text, 2).error is not None  # score text after the verdict
    assert parse_judgment("Final Scores: [[7, 3]]\nok\nFinal Scores: [[8, 2]]", 2).scores == [
        8.0,
        2.0,
    ]
