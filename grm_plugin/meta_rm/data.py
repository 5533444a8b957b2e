"""Training data for the meta RM: sampled judgments on labeled preference data, labeled correct
when their scores rank the known-best response strictly above all others (ties are wrong).

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> items = [PreferenceItem(id="a", prompt="Say hi", responses=["hi", "hello there"], best=1)]
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=2, seed=0)
    >>> records = collect_records(rm, items, progress=False)
    >>> [r.label for r in records]
    [True, True]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from ..items import PreferenceItem, is_correct
from ..prompt import Conversation
from ..results import JudgmentResult, Sample
from ..reward import GenerativeRewardFn


class MetaRMRecord(BaseModel):
    """One valid sampled judgment with its correctness label (a meta-RM training example)."""

    id: str = Field(description="the preference item's id (split train/validation by this)")
    sample_index: int = Field(description="position of the sample in the item's draw")
    prompt: str | list[dict[str, str]]
    shown_responses: list[str] = Field(description="responses in the order the judge saw them")
    judgment: str = Field(description="the judge's full output: principles, critique, scores")
    label: bool = Field(description="scores rank the best response strictly above all others")
    scores: list[float] = Field(description="parsed scores, original response order")
    order: list[int] = Field(description="order[j] = original index of the response shown j-th")
    best: int = Field(description="index of the best response, original order")


def records_from_sample(item: PreferenceItem, index: int, sample: Sample) -> MetaRMRecord | None:
    """The record of one sample, or None when it has no scores (nothing to learn from)."""
    if sample.scores is None or sample.text is None:
        return None
    return MetaRMRecord(
        id=item.id,
        sample_index=index,
        prompt=item.prompt,
        # the original texts: the core may have truncated very long responses for the judge,
        # which JudgmentResult does not keep; the meta RM truncates them again anyway
        shown_responses=[item.responses[i] for i in sample.order],
        judgment=sample.text,
        label=is_correct(sample.scores, item.best),
        scores=list(sample.scores),
        order=list(sample.order),
        best=item.best,
    )


def records_from_result(item: PreferenceItem, result: JudgmentResult) -> list[MetaRMRecord]:
    """Records of every valid sample of one judged item."""
    out = []
    for j, s in enumerate(result.samples):
        rec = records_from_sample(item, j, s)
        if rec is not None:
            out.append(rec)
    return out


def judge_items(
    rm: GenerativeRewardFn, items: Sequence[PreferenceItem], *, progress: bool = True
) -> list[JudgmentResult]:
    """Run the judge on every item (all of its samples kept in the results)."""
    prompts: list[Conversation] = [it.prompt for it in items]
    return rm.score_batch(prompts, [it.responses for it in items], progress=progress)


def collect_records(
    rm: GenerativeRewardFn, items: Sequence[PreferenceItem], *, progress: bool = True
) -> list[MetaRMRecord]:
    """Judge the items with ``rm`` (k = ``rm.sampling.samples``) and label every valid sample."""
    results = judge_items(rm, items, progress=progress)
    return [r for it, res in zip(items, results, strict=True) for r in records_from_result(it, res)]


def write_records(records: Iterable[MetaRMRecord], path: str | Path) -> int:
    """Write records as JSONL; returns how many were written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
            n += 1
    return n


def read_records(path: str | Path) -> list[MetaRMRecord]:
    """Read records written by ``write_records``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"meta-RM records not found: {p}")
    with p.open() as f:
        return [MetaRMRecord.model_validate(json.loads(line)) for line in f if line.strip()]
