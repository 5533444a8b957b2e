"""Issue 21, data defects: bad UTF-8 bytes in every reader (items 13), SPCT ids and identical
responses (13), a cut record line on resume (14), per-item writes in `spct collect` (26),
duplicated and empty benchmark rows skipped by default (30), LLMBar ids and subsets (30), and
no model load for work that can be refused or is already done (27)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.benchmark_data import BenchmarkDataError, Format, load_benchmark
from grm_plugin.cli.main import main
from grm_plugin.spct import SPCTItem, collect, read_items
from grm_plugin.spct.collect import progress_path, read_rft_records
from grm_plugin.testing import RuleJudgeEngine

from .meta_rm_fakes import marker_score
from .spct_fakes import ScriptedJudge
from .test_benchmark_readers import (
    judgebench_rows,
    llmbar_rows,
    ours_rows,
    ppe_rows,
    rewardbench2_rows,
    rewardbench_rows,
    rmb_bon_rows,
    rmb_pair_rows,
    write_json,
    write_jsonl,
)

BAD_BYTE = b"\xff"

# ------------------------------------------------------------------- item 13: bad UTF-8 bytes


def _plain(rows: list[dict]) -> list[dict]:
    # parquet fixtures hold numpy-free plain values already; jsonl needs JSON-able rows only
    return json.loads(json.dumps(rows))


@pytest.mark.parametrize(
    ("fmt", "rows"),
    [
        (Format.REWARDBENCH, rewardbench_rows),
        (Format.REWARDBENCH2, rewardbench2_rows),
        (Format.JUDGEBENCH, judgebench_rows),
        (Format.PPE_CORRECTNESS, ppe_rows),
        (Format.RMB, rmb_pair_rows),
        (Format.LLMBAR, llmbar_rows),
        (Format.GRM_PLUGIN, ours_rows),
    ],
)
def test_a_bad_utf8_byte_names_file_and_line_in_every_format(tmp_path, fmt, rows):
    plain = _plain(rows())
    good = [json.dumps(r).encode() for r in (plain * 2)[: max(2, len(plain))]]
    # the bad byte sits inside a string of the second row
    bad = good[1].replace(b'"', b'"' + BAD_BYTE, 1)
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([good[0], bad, *good[2:]]) + b"\n")
    with pytest.raises(BenchmarkDataError) as e:
        load_benchmark(path, format=fmt)
    assert f"{path}:2:" in str(e.value) and "UTF-8" in str(e.value)


def test_a_bad_utf8_byte_in_a_json_array_names_its_line(tmp_path):
    path = write_json(tmp_path / "dataset.json", llmbar_rows())
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    at = next(i for i, ln in enumerate(lines) if b"Say hi" in ln)
    lines[at] = lines[at].replace(b"Say hi", b"Say " + BAD_BYTE + b"hi")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(BenchmarkDataError, match=rf"dataset.json:{at + 1}: .*UTF-8"):
        load_benchmark(path)


def test_spct_items_report_a_bad_utf8_line_and_keep_the_others(tmp_path):
    ok = json.dumps({"id": "a", "prompt": "p", "responses": ["x", "y"], "best": 0}).encode()
    bad = json.dumps({"id": "b", "prompt": "p", "responses": ["x", "y"], "best": 0}).encode()
    path = tmp_path / "items.jsonl"
    path.write_bytes(ok + b"\n" + bad.replace(b'"p"', b'"p' + BAD_BYTE + b'"') + b"\n")
    items, report = read_items(path)
    assert [it.id for it in items] == ["a"]
    assert dict(report.counts) == {"invalid_encoding": 1}
    assert report.messages[0].startswith(f"{path}:2:") and "UTF-8" in report.messages[0]


def test_spct_accepts_numeric_ids_as_strings(tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [
        {"id": 17, "prompt": "p", "responses": ["x", "y"], "best": 0},
        {"id": 2.5, "prompt": "q", "responses": ["x"], "rating": 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, report = read_items(path)
    assert [it.id for it in items] == ["17", "2.5"] and not report.counts


def test_spct_refuses_items_whose_responses_are_identical(tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [
        {"id": "same", "prompt": "p", "responses": ["x", "y", "x "], "best": 0},
        {"id": "fine", "prompt": "p", "responses": ["x", "y"], "best": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, report = read_items(path)
    assert [it.id for it in items] == ["fine"]
    assert dict(report.counts) == {"identical_responses": 1}
    assert report.messages[0].startswith(f"{path}:1:") and "identical" in report.messages[0]


# ------------------------------------------------------- item 14: a cut line on resume


def _judge() -> ScriptedJudge:
    return ScriptedJudge(
        {
            "P a": ("a1", ["right", "wrong"], []),
            "P b": ("b1", ["right", "wrong"], []),
            "P c": ("c1", ["right", "wrong"], []),
        }
    )


ABC = [
    SPCTItem(id=x, prompt=f"P {x}", responses=[f"{x}1", f"{x}2"], best=0) for x in ("a", "b", "c")
]


def _collect(judge, out, items=ABC, **kw):
    rm = GenerativeRewardFn(judge, samples=2, seed=0, parse_retries=0)
    return collect(rm, items, out, progress=False, **kw)


@pytest.mark.parametrize("cut", ["records", "log"])
def test_resume_repairs_a_cut_last_line_and_says_so(tmp_path, caplog, cut):
    out = tmp_path / "rft.jsonl"
    _collect(_judge(), out, items=ABC[:2])
    target = out if cut == "records" else progress_path(out)
    text = target.read_text()
    # what kill -9 or a full disk leaves: the last line written halfway, no newline
    target.write_text(text + text.splitlines()[0][:25])
    with caplog.at_level(logging.WARNING):
        counts = _collect(_judge(), out)
    assert str(target) in caplog.text and "cut" in caplog.text
    assert counts.items_done == 3
    records = read_rft_records(out)  # every line parses: the partial one is gone
    assert sorted(r.id for r in records) == ["a", "b", "c"]
    for line in progress_path(out).read_text().splitlines():
        json.loads(line)


def test_resume_refuses_a_broken_line_in_the_middle_naming_it(tmp_path):
    out = tmp_path / "rft.jsonl"
    _collect(_judge(), out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(["{cut", *lines]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{out}:1:")):
        _collect(_judge(), out)


# ------------------------------------------------------- item 26: written item by item


class _Stop(BaseException):
    """Stands in for a kill: nothing after it runs."""


class _StopsAtC(ScriptedJudge):
    """Judges a and b; c waits (generous bound) until a and b are logged, then is killed."""

    def __init__(self, scripts, log: Path) -> None:
        super().__init__(scripts)
        self.log = log

    async def generate(self, request):
        if "P c" in request.messages[-1]["content"]:
            for _ in range(1000):  # up to ~10 s; per-item writes need a few milliseconds
                if self.log.is_file() and len(self.log.read_text().splitlines()) >= 2:
                    break
                await asyncio.sleep(0.01)
            raise _Stop
        return await super().generate(request)


def test_collect_writes_each_item_as_soon_as_it_is_judged(tmp_path, monkeypatch):
    updates: list[int] = []

    class Bar:
        def __init__(self, *a, **kw):
            pass

        def update(self, n=1):
            updates.append(n)

        def set_postfix(self, **kw):
            pass

        def close(self):
            pass

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    out = tmp_path / "rft.jsonl"
    judge = _StopsAtC(_judge().scripts, progress_path(out))
    rm = GenerativeRewardFn(judge, samples=2, seed=0, parse_retries=0)
    with pytest.raises(_Stop):
        collect(rm, ABC, out, chunk_size=8, progress=True)
    # a and b were judged concurrently with c and are on disk, with their progress lines
    assert sorted(r.id for r in read_rft_records(out)) == ["a", "b"]
    logged = [json.loads(ln)["id"] for ln in progress_path(out).read_text().splitlines()]
    assert sorted(logged) == ["a", "b"]
    assert updates == [1, 1]  # the bar moves per item


# ------------------------------------------------------- item 27: no model load when not needed


def test_spct_collect_with_nothing_left_does_not_load_the_judge(tmp_path, monkeypatch):
    import grm_plugin.reward as reward

    data = tmp_path / "items.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in ABC))
    out = tmp_path / "rft.jsonl"
    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    argv = ["spct", "collect", str(data), "--out", str(out), "--samples", "2", "--no-progress"]
    assert main(argv) == 0
    monkeypatch.setattr(reward, "make_engine", lambda spec: pytest.fail("model loaded"))
    assert main(argv) == 0


def test_eval_expected_scores_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: pytest.fail("model loaded"))
    data = write_jsonl(tmp_path / "d.jsonl", ours_rows())
    argv = ["eval", str(data), "--samples", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    # the embedded judge runs int8 by default; an OpenAI-style server gives no distributions
    assert main([*argv, "--expected-scores"]) == 2
    assert "quantize" in capsys.readouterr().err
    assert main([*argv, "--expected-scores", "--server", "http://127.0.0.1:9"]) == 2
    assert "score distributions" in capsys.readouterr().err


# ------------------------------------------------ item 30: duplicated and empty rows


def test_duplicated_and_empty_rows_are_skipped_with_a_warning_by_default(tmp_path, caplog):
    rows = judgebench_rows()
    rows.append(dict(rows[0], pair_id="dup", response_B=rows[0]["response_A"]))
    rows.append(dict(rows[1], pair_id="empty", response_A=""))
    path = write_jsonl(tmp_path / "jb.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        bench = load_benchmark(path)
    assert [it.id for it in bench.items] == ["e302b0a0", "2d989dfb"]
    assert bench.skipped == 2 and bench.skipped_degenerate == 2
    assert "jb.jsonl:3:" in bench.skipped_reasons[0]
    assert "skipped 2 rows" in caplog.text and "--strict" in caplog.text
    with pytest.raises(BenchmarkDataError, match="jb.jsonl:3: .*duplicated response"):
        load_benchmark(path, strict=True)


def test_a_row_repeated_verbatim_is_skipped_by_default(tmp_path):
    rows = judgebench_rows()
    path = write_jsonl(tmp_path / "jb.jsonl", [*rows, rows[0]])
    bench = load_benchmark(path)
    assert len(bench.items) == 2 and bench.skipped_degenerate == 1
    with pytest.raises(BenchmarkDataError, match="jb.jsonl:3: repeats item 1"):
        load_benchmark(path, strict=True)


def test_rmb_best_of_n_merges_duplicate_losers(tmp_path):
    rows = rmb_bon_rows()
    losers = rows[0]["loser_list"]
    losers.append(dict(losers[0]))
    bench = load_benchmark(write_json(tmp_path / "S1.json", rows), strict=True)
    assert len(bench.items[0].responses) == 3  # best + the 2 distinct losers


def test_cli_eval_strict_flag(tmp_path, monkeypatch, capsys):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    rows = ours_rows() + [{"prompt": "q", "responses": ["same", "same"], "best": 0}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    argv = ["eval", str(data), "--samples", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["n_items"] == 2 and report["benchmark"]["rows_skipped"] == 1
    assert report["benchmark"]["rows_skipped_degenerate"] == 1  # the README's names
    assert "accuracy_tie_broken" in report["methods"]["voting"][0]
    assert main([*argv, "--strict"]) != 0
    assert "d.jsonl:3: field 'responses': duplicated response" in capsys.readouterr().err


def test_llmbar_ids_are_unique_per_file_and_subsets_do_not_need_the_folder_name(tmp_path):
    ids, subsets = [], []
    for top in ("LLMBar", "llmbar-main"):
        for sub in ("Natural", "Adversarial/GPTInst"):
            folder = tmp_path / top / "Dataset" / sub
            folder.mkdir(parents=True)
            bench = load_benchmark(write_json(folder / "dataset.json", llmbar_rows()))
            ids += [it.id for it in bench.items]
            subsets.append({it.subset for it in bench.items})
    assert subsets == [{"Natural"}, {"Adversarial/GPTInst"}] * 2
    assert len(set(ids)) == 4 and ids[:2] != ids[2:4]
    assert ids[:4] == ids[4:]  # the same file gives the same ids wherever the clone is


def test_reading_records_with_a_bad_byte_names_file_and_line(tmp_path):
    out = tmp_path / "rft.jsonl"
    _collect(_judge(), out)
    lines = out.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"id"', b'"i\xffd"', 1)
    out.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=re.escape(f"{out}:2: not valid UTF-8")):
        read_rft_records(out)
