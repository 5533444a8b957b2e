"""A draw that survives a stop (``grm_plugin.draw_log``, ``grm-plugin eval``): resumed, it is the
draw an unstopped run makes, sample for sample; a different judge or different items is an
error, never a mix (issue 17: eval resumes per item, so experiments run in pieces)."""

from __future__ import annotations

import json

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.cli.main import main
from grm_plugin.draw_log import partial_path, resumable_draw, state_path
from grm_plugin.items import PreferenceItem
from grm_plugin.testing import RuleJudgeEngine


def _items(n: int) -> list[PreferenceItem]:
    return [
        PreferenceItem(id=f"q{i}", prompt=f"Q{i}", responses=["a", "bb", "c" * (i + 1)], best=1)
        for i in range(n)
    ]


def _judge() -> GenerativeRewardFn:
    # k = 4 shuffled orders of 3 responses from seed 0: each item's orders depend on its place
    # in the judge's life, so a resume that lost count would draw other orders
    return GenerativeRewardFn(RuleJudgeEngine(), samples=4, seed=0, parse_retries=0)


def _drawn(draws) -> list[tuple[str, list[list[int]], list[str | None]]]:
    return [
        (d.item.id, [s.order for s in d.result.samples], [s.text for s in d.result.samples])
        for d in draws
    ]


def test_a_resumed_draw_is_the_unstopped_draw(tmp_path):
    items = _items(10)
    whole = resumable_draw(_judge(), items, tmp_path / "whole", judge="J", chunk_size=3,
                           progress=False)  # fmt: skip
    # stopped after 2 chunks (6 items), then the same command in a new process
    resumable_draw(_judge(), items[:6], tmp_path / "cut", judge="J", chunk_size=3, progress=False)
    again = _judge()
    resumed = resumable_draw(again, items, tmp_path / "cut", judge="J", chunk_size=3,
                             progress=False)  # fmt: skip
    assert _drawn(resumed) == _drawn(whole)
    assert again.items_started == 10
    # the control: the same items judged by a fresh judge that did not resume its count
    fresh = resumable_draw(_judge(), items[6:], tmp_path / "fresh", judge="J", progress=False)
    assert _drawn(fresh) != _drawn(whole)[6:]


def test_a_chunk_on_disk_that_its_state_does_not_count_is_judged_again_once(tmp_path):
    items = _items(5)
    resumable_draw(_judge(), items[:2], tmp_path, judge="J", chunk_size=2, progress=False)
    partial = partial_path(tmp_path, "samples")
    lines = partial.read_text().splitlines()
    # a stop between the chunk's lines and its state: the second chunk's lines, no state
    with partial.open("a") as f:
        f.write(lines[0] + "\n" + lines[1][:40])  # and a line cut short
    draws = resumable_draw(_judge(), items, tmp_path, judge="J", chunk_size=2, progress=False)
    assert [d.item.id for d in draws] == ["q0", "q1", "q2", "q3", "q4"]
    assert len(partial.read_text().splitlines()) == 5


def test_another_judge_or_other_items_are_refused(tmp_path):
    items = _items(4)
    resumable_draw(_judge(), items[:2], tmp_path, judge="J", chunk_size=2, progress=False)
    with pytest.raises(ValueError, match="another judge configuration"):
        resumable_draw(_judge(), items, tmp_path, judge="K", progress=False)
    with pytest.raises(ValueError, match="not the first 2 of this input"):
        resumable_draw(_judge(), items[::-1], tmp_path, judge="J", progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        resumable_draw(_judge(), items, tmp_path, judge="J", chunk_size=0, progress=False)


def test_grm_plugin_eval_resumes_and_cleans_up(tmp_path, monkeypatch):
    import grm_plugin.reward as reward

    calls: list[int] = []

    def counting(spec):
        engine = RuleJudgeEngine()
        real = engine.generate

        async def generate(request):
            calls.append(1)
            return await real(request)

        engine.generate = generate  # type: ignore[method-assign]
        return engine

    monkeypatch.setattr(reward, "make_engine", counting)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in _items(6)))
    out = tmp_path / "out"
    argv = ["eval", str(data), "--samples", "1,2", "--out", str(out), "--no-progress"]
    # a stopped run: the first 4 items judged (chunks of 2), then the process died
    assert main([*argv, "--limit", "4", "--chunk-size", "2"]) == 0
    state = state_path(out, "samples")
    assert not state.exists()  # a finished run cleans up: its report is written
    # the same stop, made by hand: keep the partial files of a 4-item draw of the full input
    monkeypatch.setattr("grm_plugin.draw_log.clear", lambda *a, **k: None)
    out2 = tmp_path / "out2"
    argv2 = ["eval", str(data), "--samples", "1,2", "--out", str(out2), "--no-progress"]
    assert main([*argv2, "--limit", "4", "--chunk-size", "2"]) == 0
    first = len(calls)
    assert main([*argv2, "--chunk-size", "2"]) == 0  # resumes: only items 5 and 6 judged
    report = json.loads((out2 / "report.json").read_text())
    assert report["n_items"] == 6
    # 2 items x k = 2 samples; the rule judge is asked once per distinct order
    assert 0 < len(calls) - first <= 4
