"""Shared test helpers for the meta-RM and evaluation tests: a content-rule judge, preference
items whose labels agree or disagree with it, and a tiny random BERT to train as a meta RM."""

from __future__ import annotations

from pathlib import Path

from grm_plugin.items import PreferenceItem
from grm_plugin.meta_rm.data import MetaRMRecord


def marker_score(response: str) -> float:
    """GOOD -> 9, BAD -> 2, anything else -> 5: the judge is right exactly where labels agree."""
    if "GOOD" in response:
        return 9.0
    if "BAD" in response:
        return 2.0
    return 5.0


def items(n_agree: int = 2, n_disagree: int = 1, n_tie: int = 1) -> list[PreferenceItem]:
    """Items the marker judge gets right, wrong, and ties on; best alternates 0/1."""
    out = []
    for i in range(n_agree):
        best = i % 2
        resp = ["BAD x", "BAD x"]
        resp[best] = "GOOD y"
        out.append(PreferenceItem(id=f"agree{i}", prompt=f"q{i}", responses=resp, best=best))
    for i in range(n_disagree):
        best = i % 2
        resp = ["GOOD x", "GOOD x"]
        resp[best] = "BAD y"
        out.append(PreferenceItem(id=f"disagree{i}", prompt=f"p{i}", responses=resp, best=best))
    for i in range(n_tie):
        out.append(PreferenceItem(id=f"tie{i}", prompt=f"t{i}", responses=["a", "b"], best=i % 2))
    return out


WORDS = (
    "the judgment is correct wrong good bad response final scores analysis criteria "
    "specific accuracy brevity fine question answer 1 2 3 4 5 6 7 8 9 10 [ ] , . :"
).split()


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer trained here; random weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    if (folder / "config.json").exists():
        return folder
    # a whole-word vocabulary: every word the tests use is one token, anything else is [UNK]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + sorted(set(WORDS)))}
    fast = BertTokenizerFast(vocab=vocab, model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config.num_labels = 1
    BertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def synthetic_records(n_items: int = 12, per_item: int = 4) -> list[MetaRMRecord]:
    """Records whose label is written in the judgment ("correct"/"wrong"): learnable."""
    recs = []
    for i in range(n_items):
        for j in range(per_item):
            label = (i + j) % 2 == 0
            word = "correct" if label else "wrong"
            recs.append(
                MetaRMRecord(
                    id=f"item{i}",
                    sample_index=j,
                    prompt=f"question {i}",
                    shown_responses=["good answer", "bad answer"],
                    judgment=f"specific criteria: accuracy. analysis: {word} {word}. "
                    f"final scores: [[{8 if label else 3}, 5]]",
                    label=label,
                    scores=[8.0, 5.0] if label else [3.0, 5.0],
                    order=[0, 1],
                    best=0,
                )
            )
    return recs
