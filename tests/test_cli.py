import json

from grm_plugin.cli.main import main

from .openai_fakes import FakeOpenAIServer, completion

JUDGMENT = "Specific Criteria: Truth (100%)\nAnalysis: R1 right, R2 wrong.\nFinal Scores: [[9, 2]]"


def test_score_prints_principles_critique_and_scores(capsys):
    with FakeOpenAIServer(lambda b, i: completion([JUDGMENT] * b["n"])) as srv:
        rc = main(
            [
                "score",
                "--prompt",
                "2+2?",
                "--response",
                "4",
                "--response",
                "5",
                "--server",
                srv.url,
                "--server-model",
                "judge",
                "--no-shuffle",
                "-k",
                "2",
            ]
        )
    out = capsys.readouterr().out
    assert rc == 0
    assert "--- principles\nTruth (100%)" in out and "R1 right, R2 wrong." in out
    assert "response 1: 9.00" in out and "response 2: 2.00" in out


def test_score_json_output(capsys):
    with FakeOpenAIServer(lambda b, i: completion([JUDGMENT] * b["n"])) as srv:
        rc = main(
            [
                "score",
                "--prompt",
                "q",
                "--response",
                "a",
                "--response",
                "b",
                "--json",
                "--server",
                srv.url,
                "--no-shuffle",
            ]
        )
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["scores"] == [9.0, 2.0] and data["samples"][0]["principles"]


def test_unparseable_judge_exits_nonzero_with_none(capsys):
    with FakeOpenAIServer(lambda b, i: completion(["no idea"] * b["n"])) as srv:
        rc = main(["score", "--prompt", "q", "--response", "a", "--server", srv.url])
    out = capsys.readouterr().out
    assert rc == 1 and "None (no valid judgment)" in out


def test_clear_errors(capsys):
    assert main(["score", "--prompt", "q", "--response", "a", "--model", "/no/such/dir"]) == 2
    assert "judge model not found" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--prompt",
                "q",
                "--response",
                "a",
                "-k",
                "0",
                "--server",
                "http://127.0.0.1:9/v1",
            ]
        )
        == 2
    )
    assert "samples" in capsys.readouterr().err
