"""The GSM8K SPCT experiment's report and status scripts (results/spct_gsm8k) on eval draws made
here: per_item.jsonl is strict (a tie or an item with no parsed score is wrong), McNemar pairs
the stages on the same items, the preference items are reported, and status reads every stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from grm_plugin.evaluation import ItemDraw, write_draws
from grm_plugin.items import PreferenceItem
from grm_plugin.results import JudgmentResult, Sample

RESULTS = Path(__file__).resolve().parents[1] / "results" / "spct_gsm8k"


def _script(name: str):
    path = RESULTS / name
    if not path.is_file():
        pytest.skip("no results/spct_gsm8k in this checkout")
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _draw(item_id: str, scores: list[float] | None, k: int) -> ItemDraw:
    item = PreferenceItem(id=item_id, prompt="2+2?", responses=["4", "5"], best=0)
    samples = [Sample(text="x", scores=scores, order=[0, 1]) for _ in range(k)]
    return ItemDraw(item=item, result=JudgmentResult(samples=samples))


# per item and stage: the scores of every sample (None: unparsable)
BASE = {"right": [7, 3], "tie": [5, 5], "unparsed": None, "wrong": [2, 8]}
RFT = {"right": [7, 3], "tie": [8, 2], "unparsed": [9, 1], "wrong": [2, 8]}


def _eval_dir(root: Path, stage: str, plan: dict[str, list[float] | None]) -> None:
    draws = [_draw(i, s, 8) for i, s in plan.items()]
    write_draws(draws, root / "eval" / stage / "heldout_k8_00" / "samples.jsonl")
    k1 = [_draw(f"{i}-k1", s, 1) for i, s in plan.items()]
    write_draws(k1, root / "eval" / stage / "heldout_k1_00" / "samples.jsonl")
    write_draws(k1[:2], root / "eval" / stage / "preference" / "samples.jsonl")


def test_per_item_is_strict_and_pairs_the_stages(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _eval_dir(tmp_path, "base", BASE)
    _eval_dir(tmp_path, "rft", RFT)
    _script("per_item.py").main(tmp_path)
    rows = [json.loads(ln) for ln in (tmp_path / "per_item.jsonl").read_text().splitlines()]
    assert {tuple(sorted(r)) for r in rows} == {("correct", "id", "k", "stage")}
    got = {(r["stage"], r["k"], r["id"]): r["correct"] for r in rows}
    for k in (1, 2, 4, 8):
        assert [got["base", k, i] for i in BASE] == [True, False, False, False]
        assert [got["rft", k, i] for i in RFT] == [True, True, True, False]
    assert [got["base", 1, f"{i}-k1"] for i in BASE] == [True, False, False, False]
    assert ("base", 2, "right-k1") not in got  # k1 shards are k = 1 only
    summary = json.loads((tmp_path / "summary.json").read_text())
    (at_1,) = [t for t in summary["mcnemar"] if t["k"] == 1]
    # 8 items at k = 1 (4 from each shard): rft alone right on 4, base alone on none
    assert (at_1["n"], at_1["first_only"], at_1["second_only"]) == (8, 0, 4)
    assert at_1["p"] == pytest.approx(2 / 2**4)
    base_1 = next(t for t in summary["table"] if (t["stage"], t["k"]) == ("base", 1))
    assert (base_1["n"], base_1["correct"], base_1["tie_rate"], base_1["no_vote_rate"]) == (
        8,
        2,
        0.25,
        0.25,
    )
    assert base_1["accuracy_when_voted"] == pytest.approx(2 / 6)
    # decisive: "right" and "wrong" of each shard, not the tie or the unparsed item
    assert (base_1["decisive"], base_1["accuracy_when_decisive"]) == (4, 0.5)
    assert summary["preference"]["rft"]["correct"] == 2
    # the preference shard holds "right" and "tie": base ties on one of its two items
    assert (
        summary["preference"]["base"]["tie_rate"],
        summary["preference"]["base"]["no_vote_rate"],
    ) == (0.5, 0.0)
    text = (tmp_path / "summary.md").read_text()
    assert "Preference items" in text and "| base vs rft | 1 | 8 | 0 | 4 | 0.1250 |" in text
    assert (tmp_path / "accuracy_vs_k.png").stat().st_size > 0


def test_the_demo_default_check_is_reported_beside_not_among_the_stages(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _eval_dir(tmp_path, "base", BASE)
    # the *_grammar judges are judged on the preference items only (run.sh eval-STAGE_grammar)
    for stage, plan in (("base_grammar", BASE), ("rl_grammar", RFT)):
        draws = [_draw(f"{i}-k1", s, 1) for i, s in plan.items()]
        write_draws(draws, tmp_path / "eval" / stage / "preference" / "samples.jsonl")
    _script("per_item.py").main(tmp_path)
    stages = {json.loads(ln)["stage"] for ln in (tmp_path / "per_item.jsonl").open()}
    assert stages == {"base"}  # per_item.jsonl holds the experiment's stages only
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preference"]["base_grammar"]["correct"] == 1
    assert summary["preference"]["rl_grammar"]["correct"] == 3
    (test,) = [t for t in summary["preference_mcnemar"] if t["second"] == "rl_grammar"]
    assert (test["first"], test["n"], test["first_only"], test["second_only"]) == (
        "base_grammar",
        4,
        0,
        2,
    )
    assert "| rl_grammar | 4 | 75.0% |" in (tmp_path / "summary.md").read_text()


def test_status_reads_every_stage_without_writing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "problems.jsonl").write_text('{"id": "p1"}\n{"id": "p2"}\n')
    (tmp_path / "data" / "heldout_k8_00.jsonl").write_text('{"id": "right"}\n{"id": "tie"}\n')
    (tmp_path / "train.progress.jsonl").write_text('{"id": "p1"}\n{"id": "p2", "sam')
    (tmp_path / "train.jsonl").write_text('{"id": "t1"}\n')
    (tmp_path / "rft.progress.jsonl").write_text('{"id": "t1", "samples": 6}\n')
    (tmp_path / "rft.jsonl").write_text('{"id": "t1"}\n{"id": "t1"}\n')
    (tmp_path / "models" / "judge-rft.checkpoints" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "models" / "judge-rft.checkpoints" / "checkpoint-10").mkdir(parents=True)
    write_draws(
        [_draw("right", [7, 3], 8)], tmp_path / "eval" / "base" / "heldout_k8_00" / "samples.jsonl"
    )
    before = (tmp_path / "train.progress.jsonl").read_bytes()
    lines = _script("status.py").status(tmp_path)
    assert (tmp_path / "train.progress.jsonl").read_bytes() == before  # a line being written
    assert lines[:4] == [
        "make-pairs: 1 of 2 problems, 1 items",
        "collect: 1 of 1 items, 2 records kept of 6 judgments",
        "sft: checkpoint at step 20",
        "rl: not started",
    ]
    assert "eval-base heldout_k8_00: 1 of 2 items" in lines
    assert "eval-rft heldout_k8_00: not started" in lines
    # a draw in progress is read from grm-plugin eval's partial file
    (tmp_path / "data" / "preference.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    write_draws(
        [_draw("a", [7, 3], 1)],
        tmp_path / "eval" / "rft_grammar" / "preference" / "samples.partial.jsonl",
    )
    lines = _script("status.py").status(tmp_path)
    assert "eval-rft_grammar preference: 1 of 2 items" in lines
    assert "eval-base_grammar preference: not started" in lines


def test_the_committed_run_script_parses() -> None:
    """run.sh runs these commands exactly: a renamed flag fails here, and so does a config it
    names that does not load (each piece of this experiment costs hours; a typo found after a
    3-hour stage is a lost piece)."""
    import re
    import shlex

    from grm_plugin.cli.main import build_parser
    from grm_plugin.config import JudgeConfig
    from grm_plugin.spct.config import SPCTConfig

    from .run_scripts import assignments, expand, script_text

    script = RESULTS / "run.sh"
    if not script.is_file():
        pytest.skip("no results/spct_gsm8k in this checkout")
    root = RESULTS.parents[1]
    text = script_text(script)
    names = assignments(text)
    problems = names["PROBLEMS"]
    # the loop variables of evaluate(), as for one k8 shard of the base stage
    names |= {"stage": "base", "ks": "1,2,4,8", "shard": "x.jsonl", "name": "heldout_k8_00"}

    def command(line: str) -> list[str]:
        line = expand(line, names)
        return shlex.split(line[line.index("grm-plugin") :])

    commands = [command(ln) for ln in text.splitlines() if re.search(r"step \S+ grm-plugin", ln)]
    assert {tuple(c[1:3]) for c in commands} >= {
        ("spct", "make-pairs"),
        ("spct", "collect"),
        ("spct", "sft"),
        ("spct", "rl"),
    }
    assert any(c[1] == "eval" for c in commands)
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        if argv[1] == "spct":
            SPCTConfig.load(root / args.config)
        if argv[2] == "make-pairs":  # it stops at PROBLEMS, or a rerun would start the policy
            assert args.limit == int(problems)
    for stage in ("base", "rft", "rl"):  # the eval step's --config judge_$stage.yaml
        JudgeConfig.load(RESULTS / f"judge_{stage}.yaml")
        JudgeConfig.load(RESULTS / f"judge_{stage}_grammar.yaml")
    for name in re.findall(r"python \$R/(\S+\.py)", text):  # its helper scripts are committed
        assert (RESULTS / name).is_file(), name
