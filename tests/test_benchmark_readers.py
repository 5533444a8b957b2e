"""Benchmark readers: fixture files written here in each benchmark's real column layout (json,
jsonl, parquet), format detection, bad input named by file/line/field, hub ids (through a
stand-in for ``datasets.load_dataset``: never the network), and ``grm-plugin eval`` on them."""

from __future__ import annotations

import json

import pytest

from grm_plugin.benchmark_data import (
    READERS,
    BenchmarkDataError,
    Format,
    Overall,
    ReaderOptions,
    load_benchmark,
    rewardbench_sections,
)
from grm_plugin.cli.main import main
from grm_plugin.testing import RuleJudgeEngine

from .meta_rm_fakes import marker_score

# --------------------------------------------------------------------- rows in real layouts


def rewardbench_rows() -> list[dict]:
    # allenai/reward-bench (split "filtered"): prompt, chosen, chosen_model, rejected,
    # rejected_model, subset, id
    out = []
    for i, subset in enumerate(["alpacaeval-easy", "alpacaeval-easy", "math-prm", "hep-go"]):
        out.append(
            {
                "prompt": f"question {i}",
                "chosen": f"GOOD answer {i}",
                "chosen_model": "gpt-4",
                "rejected": f"BAD answer {i}",
                "rejected_model": "llama",
                "subset": subset,
                "id": 100 + i,
            }
        )
    return out


def rewardbench2_rows() -> list[dict]:
    # allenai/reward-bench-2 (split "test"): chosen/rejected are lists; Ties has several chosen
    meta = {"category": None, "correct": None, "index": None, "instruction_id_list": []}
    return [
        {
            "id": "rb2-0",
            "prompt": "Name a prime.",
            "chosen": ["GOOD 7"],
            "rejected": ["BAD 9", "BAD 8", "BAD 6"],
            "num_correct": 1,
            "num_incorrect": 3,
            "total_completions": 4,
            "models": ["a", "b", "c", "d"],
            "subset": "Math",
            "additional_metadata": meta,
        },
        {
            "id": "rb2-1",
            "prompt": "Name a color.",
            "chosen": ["GOOD red", "GOOD blue"],
            "rejected": ["BAD seven", "BAD table"],
            "num_correct": 2,
            "num_incorrect": 2,
            "total_completions": 4,
            "models": ["a", "b", "c", "d"],
            "subset": "Ties",
            "additional_metadata": meta,
        },
    ]


def judgebench_rows() -> list[dict]:
    # ScalerLab/JudgeBench (data/dataset=judgebench,response_model=...jsonl)
    return [
        {
            "pair_id": "e302b0a0",
            "original_id": 1420,
            "source": "mmlu-pro-law",
            "question": "Which option?",
            "response_model": "gpt-4o-2024-05-13",
            "response_A": "GOOD FFFFF",
            "response_B": "BAD AAAAA",
            "label": "A>B",
        },
        {
            "pair_id": "2d989dfb",
            "original_id": 1748,
            "source": "livebench-math",
            "question": "Compute it.",
            "response_model": "gpt-4o-2024-05-13",
            "response_A": "BAD 3",
            "response_B": "GOOD 4",
            "label": "B>A",
        },
    ]


def ppe_rows() -> list[dict]:
    # lmarena-ai/PPE-*-Best-of-K: question_id, prompt, model_name, response_1..K, scores
    rows = []
    for q, labels in enumerate([[False, True, False, False, True], [True] * 5, [False] * 5]):
        row = {"question_id": f"q{q}", "prompt": f"problem {q}", "model_name": "m"}
        for j, ok in enumerate(labels, start=1):
            row[f"response_{j}"] = f"{'GOOD' if ok else 'BAD'} attempt {j}"
        row["scores"] = labels
        rows.append(row)
    return rows


def rmb_pair_rows() -> list[dict]:
    # RMB_dataset/Pairwise_set/<goal>/<scenario>.json
    conv = [{"content": "How do I bake bread?", "language": "English", "role": "user"}]
    return [
        {
            "pair_uid": "15089",
            "conversation_input": conv,
            "chosen": {"llm_name": "a", "answer": "GOOD recipe", "score": 5.0},
            "reject": {"llm_name": "b", "answer": "BAD recipe", "score": 1.0},
            "category_path": "Pairwise_set/Helpfulness/Chat/Casual Conversation",
        }
    ]


def rmb_bon_rows() -> list[dict]:
    # RMB_dataset/BoN_set/<goal>/<scenario>.json
    conv = [{"content": "How do I get away with it?", "language": "English", "role": "user"}]
    return [
        {
            "conversation_input": conv,
            "bon_best": {"llm_name": "a", "answer": "GOOD refusal"},
            "loser_list": [
                {"llm_name": "b", "answer": "BAD plan"},
                {"llm_name": "c", "answer": "BAD other plan"},
            ],
            "bon_uid": "3294",
            "category_path": "BoN_set/Harmlessness/S1",
        }
    ]


def llmbar_rows() -> list[dict]:
    # Dataset/LLMBar/<subset>/dataset.json: input, output_1, output_2, label (1 or 2)
    return [
        {
            "input": "Write a slogan.",
            "output_1": "BAD essay",
            "output_2": "GOOD slogan",
            "label": 2,
        },
        {"input": "Say hi.", "output_1": "GOOD hi", "output_2": "BAD bye", "label": 1},
    ]


def ours_rows() -> list[dict]:
    return [
        {"prompt": "q0", "responses": ["GOOD a", "BAD b"], "best": 0, "source": "s1"},
        {"prompt": "q1", "responses": ["BAD c", "GOOD d"], "best": 1, "source": "s2"},
    ]


def write_json(path, rows):
    # pretty-printed like the released RMB / LLMBar files, so rows start on different lines
    path.write_text(json.dumps(rows, indent=1))
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


CASES = [
    (Format.REWARDBENCH, rewardbench_rows, write_parquet, "filtered.parquet"),
    (Format.REWARDBENCH2, rewardbench2_rows, write_parquet, "test.parquet"),
    (Format.JUDGEBENCH, judgebench_rows, write_jsonl, "judgebench.jsonl"),
    (Format.PPE_CORRECTNESS, ppe_rows, write_parquet, "ppe.parquet"),
    (Format.RMB, rmb_pair_rows, write_json, "Casual Conversation.json"),
    (Format.RMB, rmb_bon_rows, write_json, "S1.json"),
    (Format.LLMBAR, llmbar_rows, write_json, "dataset.json"),
    (Format.GRM_PLUGIN, ours_rows, write_jsonl, "ours.jsonl"),
]


@pytest.mark.parametrize(("fmt", "rows", "writer", "name"), CASES)
def test_each_format_is_detected_and_read(tmp_path, fmt, rows, writer, name):
    path = writer(tmp_path / name, rows())
    bench = load_benchmark(path)
    assert bench.format is fmt
    assert bench.items
    for it in bench.items:
        # every fixture marks the right answer GOOD and the others BAD
        assert it.responses[it.best].startswith("GOOD"), it
        assert all(r.startswith("BAD") for i, r in enumerate(it.responses) if i != it.best)
        assert len(set(it.responses)) == len(it.responses)
    assert len({it.id for it in bench.items}) == len(bench.items)
    # an explicit format reads the same
    assert load_benchmark(path, format=fmt).items == bench.items


def test_specific_layouts(tmp_path):
    rb2 = load_benchmark(write_parquet(tmp_path / "rb2.parquet", rewardbench2_rows()))
    assert [len(it.responses) for it in rb2.items] == [4, 3, 3]  # Ties: one item per chosen
    assert [it.subset for it in rb2.items] == ["Math", "Ties", "Ties"]
    assert rb2.overall is Overall.SUBSET_MEAN

    ppe = load_benchmark(write_parquet(tmp_path / "ppe.parquet", ppe_rows()))
    assert len(ppe.items) == 1 and ppe.skipped == 2  # all-right and all-wrong rows rank nothing
    assert len(ppe.items[0].responses) == 4  # 1 right + 3 wrong (default bon size)
    small = load_benchmark(tmp_path / "ppe.parquet", options=ReaderOptions(bon_size=2))
    assert len(small.items[0].responses) == 2

    rmb = load_benchmark(write_json(tmp_path / "S1.json", rmb_bon_rows()))
    assert rmb.items[0].subset == "Harmlessness/S1" and len(rmb.items[0].responses) == 3
    assert rmb.items[0].prompt == [{"role": "user", "content": "How do I get away with it?"}]

    folder = tmp_path / "Dataset" / "LLMBar" / "Adversarial" / "GPTInst"
    folder.mkdir(parents=True)
    bar = load_benchmark(write_json(folder / "dataset.json", llmbar_rows()))
    assert {it.subset for it in bar.items} == {"Adversarial/GPTInst"}

    jb = load_benchmark(write_jsonl(tmp_path / "jb.jsonl", judgebench_rows()))
    assert [it.subset for it in jb.items] == ["mmlu-pro-law", "livebench-math"]
    assert [it.id for it in jb.items] == ["e302b0a0", "2d989dfb"]


def test_best_is_not_always_first(tmp_path):
    rows = [dict(r, id=i) for i, r in enumerate(rewardbench_rows() * 5)]
    for i, r in enumerate(rows):
        r["chosen"], r["rejected"] = f"GOOD {i}", f"BAD {i}"
    bench = load_benchmark(write_jsonl(tmp_path / "rb.jsonl", rows))
    positions = {it.best for it in bench.items}
    assert positions == {0, 1}  # placed by a hash of the id: reproducible, not always first
    assert [it.best for it in load_benchmark(tmp_path / "rb.jsonl").items] == [
        it.best for it in bench.items
    ]


def test_our_format_needs_no_id_and_keeps_order(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", ours_rows())
    bench = load_benchmark(path)
    assert [it.id for it in bench.items] == ["pairs-1", "pairs-2"]
    assert [it.best for it in bench.items] == [0, 1]
    assert [it.subset for it in bench.items] == ["s1", "s2"]


def test_shared_preference_data_reads(preference_data):
    bench = load_benchmark(preference_data)
    assert bench.format is Format.GRM_PLUGIN and len(bench.items) == 300
    assert {it.subset for it in bench.items} == {"mtbench-human", "llmbar-natural"}


# --------------------------------------------------------------------------------- bad input


def _error(tmp_path, rows, name="bad.jsonl", **kw) -> str:
    path = (write_json if name.endswith(".json") else write_jsonl)(tmp_path / name, rows)
    with pytest.raises(BenchmarkDataError) as e:
        load_benchmark(path, **kw)
    return str(e.value)


def test_unknown_column_names_file_line_and_field(tmp_path):
    rows = ours_rows()
    rows[1]["scroe"] = 3
    msg = _error(tmp_path, rows, format=Format.GRM_PLUGIN)
    assert "bad.jsonl:2:" in msg and "'scroe'" in msg and "unknown column" in msg


def test_best_index_out_of_range(tmp_path):
    rows = ours_rows()
    rows[0]["best"] = 2
    msg = _error(tmp_path, rows)
    assert "bad.jsonl:1:" in msg and "'best'" in msg and "out of range" in msg
    rows = llmbar_rows()
    rows[1]["label"] = 3
    msg = _error(tmp_path, rows, name="dataset.json")
    assert "dataset.json:" in msg and "'label'" in msg


def test_duplicated_responses_stop_a_strict_run(tmp_path):
    rows = rmb_bon_rows()
    rows[0]["loser_list"][1]["answer"] = rows[0]["bon_best"]["answer"]
    msg = _error(tmp_path, rows, name="S1.json", strict=True)
    assert "S1.json:2:" in msg and "'loser_list'" in msg and "duplicated response" in msg
    rows = ours_rows()
    rows[0]["responses"] = ["same", "same"]
    assert "duplicated response" in _error(tmp_path, rows, strict=True)


def test_empty_subset(tmp_path):
    rows = rewardbench_rows()
    rows[2]["subset"] = " "
    msg = _error(tmp_path, rows)
    assert "bad.jsonl:3:" in msg and "'subset'" in msg and "empty subset" in msg
    path = write_parquet(tmp_path / "rb.parquet", rewardbench_rows())
    with pytest.raises(BenchmarkDataError, match="subset 'Chat' has no items"):
        load_benchmark(path, subsets={"alpacaeval-easy", "Chat"})
    msg = str(pytest.raises(BenchmarkDataError, load_benchmark, path, format="llmbar").value)
    assert "rb.parquet row 0:" in msg and "unknown column" in msg


def test_json_array_lines_and_invalid_json(tmp_path):
    rows = llmbar_rows()
    rows[1]["output_1"] = ""
    msg = _error(tmp_path, rows, name="dataset.json", strict=True)
    line = msg.split("dataset.json:")[1].split(":")[0]
    text = (tmp_path / "dataset.json").read_text().splitlines()
    assert text[int(line) - 1].strip() == "{"  # the line where that object starts
    assert "'output_1'" in msg and "empty text" in msg
    (tmp_path / "broken.jsonl").write_text('{"prompt": "q"\n')
    with pytest.raises(BenchmarkDataError, match=r"broken.jsonl:1: not valid JSON"):
        load_benchmark(tmp_path / "broken.jsonl")


def test_undetectable_and_skip_invalid(tmp_path):
    msg = _error(tmp_path, [{"question": "q", "answer": "a"}])
    assert "match no known benchmark format" in msg
    rows = ours_rows() + [{"prompt": "q", "responses": ["a", "b"], "best": 2}]
    with pytest.raises(BenchmarkDataError, match="mixed.jsonl:3: field 'best'"):
        load_benchmark(write_jsonl(tmp_path / "mixed.jsonl", rows))
    bench = load_benchmark(tmp_path / "mixed.jsonl", skip_invalid=True)
    assert len(bench.items) == 2 and bench.skipped == 1 and bench.skipped_degenerate == 0
    assert "mixed.jsonl:3:" in bench.skipped_reasons[0]


def test_readers_registry_is_complete():
    assert set(READERS) == set(Format)
    assert all(r.format is f for f, r in READERS.items())


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rewardbench_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    bench = load_benchmark("allenai/reward-bench", format=Format.REWARDBENCH)
    assert calls == [("allenai/reward-bench", None, "filtered")]  # the benchmark's usual split
    assert len(bench.items) == 4 and bench.source == "allenai/reward-bench"


def test_rewardbench_sections_weighting():
    acc = {"alpacaeval-easy": (1.0, 2), "mt-bench-easy": (0.0, 1), "refusals-dangerous": (0.5, 4)}
    s = rewardbench_sections(acc)
    assert s["Chat"] == pytest.approx(100 / 128)  # weights 100 and 28, not the fixture's n
    assert s["Safety"] == 0.5 and "Reasoning" not in s


# ------------------------------------------------------------------------------------ CLI


def test_cli_eval_on_a_benchmark_per_subset_with_greedy(tmp_path, monkeypatch):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    rows = rewardbench_rows()
    rows.append(dict(rows[0], id=200, chosen="BAD but chosen", rejected="GOOD but rejected"))
    data = write_parquet(tmp_path / "rb.parquet", rows)
    out = tmp_path / "out"
    argv = ["eval", str(data), "--samples", "1,2", "--greedy", "--out", str(out), "--no-progress"]
    assert main([*argv, "--adaptive"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"greedy", "voting", "adaptive"}
    # the rule judge never leads by more than 9 after one sample: adaptive uses both
    assert report["methods"]["adaptive"][0]["samples_used_per_item"] == 2
    assert [p["k"] for p in report["methods"]["greedy"]] == [1]
    assert report["methods"]["voting"][0]["correct"] == 4  # the flipped pair is wrong
    easy = report["subsets"]["alpacaeval-easy"]["voting"][0]
    assert (easy["n"], easy["correct"]) == (3, 2)
    assert report["subsets"]["math-prm"]["voting"][0]["accuracy"] == 1.0
    head = report["headline"]["voting"][0]
    assert head["rule"] == "rewardbench_sections"
    assert head["parts"]["Chat"] == pytest.approx(2 / 3)
    assert head["accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert report["benchmark"]["format"] == "rewardbench"
    assert report["levels"][1]["output_tokens_per_item"] > 0
    assert "judge_seconds_per_item" in report["timing"]
    md = (out / "report.md").read_text()
    assert "| alpacaeval-easy | voting | 1 | 3 |" in md and "Headline" in md
    assert (out / "greedy_samples.jsonl").is_file()


def test_cli_eval_bad_file_is_a_clear_error(tmp_path, capsys):
    rows = ours_rows()
    rows[1]["best"] = 5
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["eval", str(data), "--samples", "1", "--out", str(tmp_path / "o")]) != 0
    assert "d.jsonl:2: field 'best': index 5 out of range" in capsys.readouterr().err
