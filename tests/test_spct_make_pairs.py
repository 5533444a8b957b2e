"""`spct make-pairs`: the numeric checker, pairing (right + wrong, reference fallback, none-wrong
skip), bad input counted, resume after a cut line, and the CLI end to end against a scripted
OpenAI-compatible policy server (real HTTP, the real openai engine)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from grm_plugin.cli.main import main
from grm_plugin.engines.base import EngineError, GenerationRequest, JudgeEngine
from grm_plugin.spct.checkers import (
    NumericChecker,
    Verdict,
    get_checker,
    register_checker,
)
from grm_plugin.spct.config import MakePairsSettings, SPCTConfig
from grm_plugin.spct.items import read_items
from grm_plugin.spct.make_pairs import (
    MakePairsCounts,
    Problem,
    best_position,
    make_pairs,
    progress_path,
    read_problems,
)

from .openai_fakes import FakeOpenAIServer, completion

NUM = NumericChecker()


@pytest.mark.parametrize(
    ("text", "reference", "verdict"),
    [
        ("3 + 39 = 42\nA: 42", "42", Verdict.RIGHT),
        ("She has 40 + 2 apples.\n#### 42", "42", Verdict.RIGHT),
        ("So the total is \\boxed{42}.", "42", Verdict.RIGHT),
        ("It costs 600 * 2 = 1200.5 in all. The answer is $1,200.50", "1200.5", Verdict.RIGHT),
        ("6 * 7 = 42.", "42", Verdict.RIGHT),  # trailing period
        ("A: 42.", "42", Verdict.RIGHT),
        ("Answer: 1,000,000", "1000000", Verdict.RIGHT),
        ("He loses 5.\nA: -5", "-5", Verdict.RIGHT),
        ("The change is 10-5 = 5", "5", Verdict.RIGHT),  # subtraction, not a negative number
        ("Half of it.\nA: 1/2", "0.5", Verdict.RIGHT),
        ("A: 0.30000000001", "0.3", Verdict.RIGHT),  # within tolerance
        ("A: 42\nWait, 7 more. The answer is 49", "42", Verdict.WRONG),  # the last marker wins
        ("A: 42.5", "42", Verdict.WRONG),
        ("#### 41", "42", Verdict.WRONG),
        ("3, then 12, so 15 in total", "15", Verdict.RIGHT),  # no marker: the last number
        ("I am not sure how to solve this.", "42", Verdict.NO_ANSWER),
    ],
)
def test_numeric_checker(text: str, reference: str, verdict: Verdict) -> None:
    ref = NUM.reference(reference)
    assert ref is not None
    assert NUM.check(text, ref) is verdict


def test_strict_checker_gives_a_cut_solution_no_answer() -> None:
    """Measured: the 0.5B policy often hits the token limit mid-solution (2 of 6 paired
    solutions in results/spct_gsm8k/measure); its last number is not an answer it gave."""
    strict = get_checker("numeric-strict")
    cut = "Step 1: 2 kg = 2000 g\nStep 2: number_of_bars = 2000 / 125 = 16\nStep 3: 16 * 3"
    assert NUM.check(cut, 16.0) is Verdict.WRONG  # the lenient checker reads "3"
    assert strict.check(cut, 16.0) is Verdict.NO_ANSWER
    assert strict.check(cut + " = 48\nA: 48", 16.0) is Verdict.WRONG
    assert strict.check("2000 / 125 = 16\n#### 16", 16.0) is Verdict.RIGHT


def test_numeric_reference_unreadable_and_checker_registry() -> None:
    assert NUM.reference("none") is None and NUM.reference("") is None
    assert get_checker("numeric").reference("$1,200") == 1200.0
    imported = get_checker("grm_plugin.spct.checkers:NumericChecker")
    assert isinstance(imported, NumericChecker)
    with pytest.raises(ValueError, match="unknown checker"):
        get_checker("nope")
    with pytest.raises(TypeError):
        register_checker("broken", object())  # type: ignore[arg-type]


class ScriptedPolicy(JudgeEngine):
    """Per question, the solutions written in turn (a question mapped to "fail" raises)."""

    def __init__(self, scripts: dict[str, list[str] | str]) -> None:
        self.scripts = scripts
        self.used: dict[str, int] = defaultdict(int)
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        content = request.messages[-1]["content"]
        question = next(q for q in self.scripts if q in content)
        script = self.scripts[question]
        if script == "fail":
            raise EngineError("scripted policy failure")
        out = []
        for _ in range(request.n):
            out.append(script[self.used[question] % len(script)])
            self.used[question] += 1
        return out


def _problem(pid: str, question: str, answer: str, solution: str | None = None) -> Problem:
    return Problem(pid, question, answer, NUM.reference(answer), solution)


def test_pairing_right_with_wrong_reference_fallback_and_none_wrong_skip(tmp_path: Path) -> None:
    problems = [
        _problem("mixed", "Q1 2+2?", "4", "2+2=4"),
        _problem("all-wrong", "Q2 3+3?", "6", "3+3=6"),
        _problem("all-right", "Q3 1+1?", "2", "1+1=2"),
        _problem("no-ref", "Q4 5+5?", "10"),
        _problem("only-unanswered", "Q5 9+9?", "18", "9+9=18"),
    ]
    policy = ScriptedPolicy(
        {
            "Q1": ["2+2=4\nA: 4", "2+2=5\nA: 5", "I give up", "A: 4"],
            "Q2": ["3+3=7\nA: 7", "3+3=8\nA: 8"],
            "Q3": ["A: 2"],
            "Q4": ["A: 11"],
            "Q5": ["hmm", "A: 18"],
        }
    )
    out = tmp_path / "pairs.jsonl"
    counts = make_pairs(problems, out, MakePairsSettings(samples=4), policy, progress=False)
    assert all(r.n == 4 and r.temperature == 0.8 for r in policy.requests)
    assert "Q1 2+2?" in policy.requests[0].messages[-1]["content"]
    items = {it["id"]: it for it in map(json.loads, out.read_text().splitlines())}
    assert set(items) == {"mixed", "all-wrong"}

    mixed = items["mixed"]
    assert mixed["source"] == "make-pairs-model-vs-model" and mixed["reference"] == "4"
    assert mixed["prompt"] == "Q1 2+2?"
    assert NUM.check(mixed["responses"][mixed["best"]], 4.0) is Verdict.RIGHT
    assert mixed["responses"][1 - mixed["best"]] == "2+2=5\nA: 5"  # never the unanswered one

    fallback = items["all-wrong"]
    assert fallback["source"] == "make-pairs-reference-vs-model"
    assert fallback["responses"][fallback["best"]] == "3+3=6\nA: 6"  # reference_format
    assert fallback["responses"][1 - fallback["best"]] in {"3+3=7\nA: 7", "3+3=8\nA: 8"}

    assert (counts.pairs, counts.pairs_model_vs_model, counts.pairs_reference_vs_model) == (2, 1, 1)
    assert (counts.skipped_no_wrong, counts.skipped_no_right) == (2, 1)  # all-right, unanswered
    assert (counts.samples, counts.samples_right, counts.samples_no_answer) == (20, 8, 3)
    assert counts.problems_done == 5
    # every item reads as a judge item for collect / rl / eval
    read, report = read_items(out)
    assert len(read) == 2 and not report.counts


def test_best_position_is_balanced_and_seeded() -> None:
    positions = [best_position(i, seed=7) for i in range(100)]
    assert positions.count(0) == 50
    assert positions != [best_position(i, seed=8) for i in range(100)]
    assert any(positions[2 * b] == 0 for b in range(50)) and any(
        positions[2 * b] == 1 for b in range(50)
    )


def test_bad_problems_are_counted_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    lines = [
        b'{"id": "ok", "question": "1+1?", "answer": "2"}',
        b'{"id": "num", "question": "2+2?", "answer": 4}',  # a JSON number is fine
        b'{"id": "noans", "question": "3+3?"}',
        b'{"id": "empty", "question": "3+3?", "answer": "  "}',
        b'{"id": "word", "question": "4+4?", "answer": "eight"}',
        b'{"id": "noq", "answer": "2"}',
        b'{"id": "ok", "question": "again?", "answer": "2"}',
        b'{"id": "cut", "question": "5+',
        b"[1, 2]",
        b'{"id": "latin1", "question": "caf\xe9?", "answer": "1"}',
        b"",
        b'{"question": "no id?", "answer": "3"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems, report = read_problems(path)
    assert [p.id for p in problems][:2] == ["ok", "num"] and len(problems) == 3
    assert problems[2].id.startswith("sha-")
    assert dict(report.counts) == {
        "no_answer": 2,
        "unparsable_answer": 1,
        "missing_fields": 1,
        "duplicate_id": 1,
        "invalid_json": 2,
        "bad_utf8": 1,
    }
    assert any(":8:" in m for m in report.messages)  # file and line
    # custom field names
    path2 = tmp_path / "custom.jsonl"
    path2.write_text('{"qid": "x", "q": "1+2?", "gold": "3"}\n')
    settings = MakePairsSettings(id_field="qid", question_field="q", answer_field="gold")
    assert [p.id for p in read_problems(path2, settings)[0]] == ["x"]


def test_resume_after_a_cut_line_skips_done_problems(tmp_path: Path) -> None:
    problems = [_problem(f"p{i}", f"Q{i} sum?", str(i)) for i in range(4)]
    scripts: dict[str, list[str] | str] = {f"Q{i}": [f"A: {i}", f"A: {i + 1}"] for i in range(4)}
    scripts["Q3"] = "fail"  # the engine fails on this one: not finished, tried again later
    out = tmp_path / "pairs.jsonl"
    first = make_pairs(problems, out, MakePairsSettings(samples=2), ScriptedPolicy(scripts))
    assert (first.pairs, first.engine_failed_problems) == (3, 1)
    # a run killed while writing p2's pair: half a line, and p2 not in the progress log
    pair_lines = out.read_text().splitlines()
    out.write_text("\n".join(pair_lines[:2]) + "\n" + pair_lines[2][:25])
    log_lines = progress_path(out).read_text().splitlines()
    progress_path(out).write_text("\n".join(log_lines[:2]) + "\n" + log_lines[2][:10])

    scripts["Q3"] = ["A: 3", "A: 4"]
    policy = ScriptedPolicy(scripts)
    second = make_pairs(problems, out, MakePairsSettings(samples=2), policy, progress=False)
    asked = [re.search(r"Q\d", r.messages[-1]["content"]).group(0) for r in policy.requests]
    assert sorted(asked) == ["Q2", "Q3"]  # p0, p1 were done
    assert second.resumed == 2 and second.problems_done == 4 and second.pairs == 4
    items = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert sorted(it["id"] for it in items) == ["p0", "p1", "p2", "p3"]
    assert [it["best"] for it in items].count(0) == 2  # balanced across the two runs
    saved = MakePairsCounts.model_validate_json((tmp_path / "pairs.counts.json").read_text())
    assert saved.pairs == 4

    class NoEngine:  # nothing left: the engine (a model load) is never built
        def __call__(self) -> JudgeEngine:
            raise AssertionError("engine built with nothing left to sample")

    third = make_pairs(problems, out, MakePairsSettings(samples=2), NoEngine(), progress=False)
    assert third.resumed == 4 and third.pairs == 4


def test_an_output_not_written_by_make_pairs_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "gsm8k_pairs_dev.jsonl"  # someone's data, given as --out by mistake
    out.write_text('{"id": "x"}\n')
    with pytest.raises(FileExistsError, match="not written by make-pairs"):
        make_pairs([_problem("p", "Q1 1+1?", "2")], out, MakePairsSettings(), ScriptedPolicy({}))
    assert out.read_text() == '{"id": "x"}\n'


def test_resume_keeps_a_pair_whose_text_holds_a_line_separator(tmp_path: Path) -> None:
    # JSON keeps U+2028 unescaped: read back with str.splitlines, the pair's line broke in two
    # and the finished problem was silently sampled again
    problems = [_problem("p", "Q1 1+1?\u2028Think.", "2")]
    out = tmp_path / "pairs.jsonl"
    policy = ScriptedPolicy({"Q1": ["A: 2", "A: 3\u2028so 3"]})
    first = make_pairs(problems, out, MakePairsSettings(samples=2), policy, progress=False)
    assert first.pairs == 1

    class NoEngine:
        def __call__(self) -> JudgeEngine:
            raise AssertionError("a finished problem was sampled again")

    second = make_pairs(problems, out, MakePairsSettings(samples=2), NoEngine(), progress=False)
    assert second.resumed == 1 and second.pairs == 1
    assert json.loads(out.read_text())["prompt"] == "Q1 1+1?\u2028Think."


def _policy_server_behaviour(body: dict, call_no: int) -> dict:
    content = body["messages"][-1]["content"]
    n = body.get("n", 1)
    if "Tom" in content:  # answer 12: one right, the rest wrong
        texts = ["Tom has 5 + 7 = 12 apples.\nA: 12"] + ["5 + 7 = 13\nA: 13"] * (n - 1)
    elif "Ann" in content:  # answer 1200.5: every sample wrong, so the reference stands in
        texts = ["Ann pays $1,100.\nA: 1100"] * n
    else:  # every sample right: skipped
        texts = ["#### 3"] * n
    return completion(texts)


def test_cli_make_pairs_end_to_end_with_config_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = tmp_path / "problems.jsonl"
    rows = [
        {"id": "t1", "question": "Tom has 5 apples and gets 7. How many?", "answer": "12"},
        {
            "id": "t2",
            "question": "Ann pays 1200.50. How much?",
            "answer": "$1,200.50",
            "solution": "She pays 1200.50.",
        },
        {"id": "t3", "question": "1 + 2?", "answer": "3", "solution": "1+2=3"},
        {"id": "t4", "question": "No answer here"},
    ]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad json\n")
    config = tmp_path / "spct.yaml"
    config.write_text("make_pairs:\n  samples: 3\n  temperature: 0.6\n  source: gsm8k-train\n")
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAIServer(_policy_server_behaviour) as srv:
        argv = ["spct", "make-pairs", str(problems), "--out", str(out), "--server", srv.url]
        argv += ["--config", str(config), "--samples", "4", "--no-progress"]
        assert main(argv) == 0
        bodies = list(srv.bodies)
    assert {b["temperature"] for b in bodies} == {0.6}  # from the YAML
    assert sum(b["n"] for b in bodies) == 12  # --samples 4 wins over the YAML's 3, 3 problems
    printed = capsys.readouterr()
    assert "pairs 2" in printed.out and "invalid_json 1" in printed.out
    assert "no_answer 1" in printed.out and "skipped" in printed.err
    counts = json.loads((tmp_path / "pairs.counts.json").read_text())
    assert counts["bad_input"] == {"invalid_json": 1, "no_answer": 1}
    assert (counts["pairs"], counts["skipped_no_wrong"], counts["samples"]) == (2, 1, 12)
    items = {it.id: it for it in read_items(out)[0]}
    assert items["t1"].responses[items["t1"].best].endswith("A: 12")
    t2 = json.loads(next(ln for ln in out.read_text().splitlines() if '"t2"' in ln))
    assert t2["source"] == "gsm8k-train-reference-vs-model" and t2["reference"] == "$1,200.50"
    assert t2["responses"][t2["best"]] == "She pays 1200.50.\nA: $1,200.50"

    # rerun: nothing left, so no engine is built (with --model omitted that is the model load)
    import grm_plugin.engines as engines

    def no_engine(spec):  # noqa: ANN001
        raise AssertionError("engine built on a finished run")

    monkeypatch.setattr(engines, "make_engine", no_engine)
    assert main(["spct", "make-pairs", str(problems), "--out", str(out), "--no-progress"]) == 0
    assert "(3 resumed)" in capsys.readouterr().out


def test_example_config_has_the_make_pairs_section() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "spct.yaml"
    cfg = SPCTConfig.load(example)
    assert yaml.safe_load(example.read_text())["make_pairs"]["checker"] == "numeric"
    assert cfg.make_pairs.samples == 4 and cfg.make_pairs.solution_field == "solution"
    assert cfg.rl.loss_type == "grpo"
    with pytest.raises(ValueError, match="extra"):
        SPCTConfig.model_validate({"make_pairs": {"sample": 4}})  # strict: typos are errors


def test_numeric_checker_agrees_with_every_label_of_the_gsm8k_dev_pairs() -> None:
    """On real model-written solutions (GSM8K's GPT-3 samples): the best response of each of the
    600 dev pairs checks right against its reference, the other wrong."""
    from .conftest import SHARED_DATA

    path = SHARED_DATA / "gsm8k_pairs_dev.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not here")
    items = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    disagree = []
    for it in items:
        ref = NUM.reference(it["reference"])
        got = [NUM.check(r, ref) for r in it["responses"]]
        want = [Verdict.RIGHT if i == it["best"] else Verdict.WRONG for i in range(2)]
        if got != want:
            disagree.append(it["id"])
    assert len(items) >= 600 and disagree == []
