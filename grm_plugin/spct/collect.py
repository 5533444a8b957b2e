"""Rejective fine-tuning data: sample N judgments per item, keep only the correct ones.

Judging goes through ``GenerativeRewardFn`` itself (production prompt, response shuffling, fences,
truncation and parser), and each kept record holds the exact messages that sample was judged with.
Items where all N were correct are dropped (too easy). With ``hint_retry``, items where none was
correct get one more round whose prompt names the best response; what it keeps is marked hinted.

The output is written item by item, with a progress log beside it (``<out>.progress.jsonl``): a
run stopped midway is resumed by running it again, and finished items are not judged again. Items
whose judging failed in the engine are not logged, so a rerun tries them again.

Example:
    >>> import tempfile, pathlib
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> items = [SPCTItem(id="a", prompt="Say hi", responses=["hi", "hello there"], best=0)]
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=3, seed=0, parse_retries=0)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "rft.jsonl"
    >>> counts = collect(rm, items, out, hint_retry=True, progress=False)
    >>> counts.rejected_wrong, counts.kept, counts.hinted
    (6, 0, 0)
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..results import FailureKind, JudgmentResult, Sample
from ..reward import GenerativeRewardFn, run_sync
from .items import ReadReport, SPCTItem

_ENGINE_KINDS = (FailureKind.ENGINE, FailureKind.TIMEOUT)


class RFTRecord(BaseModel):
    """One kept judgment as a chat example: the judge's messages, then the judgment."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the item's id")
    sample_index: int = Field(description="position of the sample in its round")
    messages: list[dict[str, str]] = Field(
        description="the judge messages exactly as the judge saw them, then the judgment as the "
        "assistant turn"
    )
    order: list[int] = Field(description="order[j] = original index of the response shown j-th")
    scores: list[float] = Field(description="parsed scores, original order")
    best: int | None = None
    rating: float | None = None
    hinted: bool = Field(False, description="sampled with a hint naming the best response")


class ItemOutcome(BaseModel):
    """One finished item, as logged in the progress file (resume reads these back)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    samples: int = 0
    kept: int = 0
    wrong: int = 0
    unparsable: int = 0
    too_easy: bool = False
    hint_retried: bool = False
    hinted_kept: int = 0


class CollectCounts(BaseModel):
    """What a collect run did (cumulative over resumed runs for finished items)."""

    items_read: int = Field(0, description="valid items in the input")
    bad_input: dict[str, int] = Field(default_factory=dict, description="skipped lines by reason")
    bad_input_messages: list[str] = Field(default_factory=list)
    resumed: int = Field(0, description="items already finished in the output (not re-judged)")
    items_done: int = Field(0, description="items finished, this run and earlier ones")
    samples: int = Field(0, description="judgments drawn on finished items (hint round included)")
    kept: int = Field(0, description="correct judgments written as records (hinted included)")
    rejected_wrong: int = Field(0, description="parsed judgments that were wrong (ties included)")
    rejected_unparsable: int = 0
    dropped_too_easy: int = Field(0, description="items whose N judgments were all correct")
    hint_retried: int = Field(0, description="items that got the hinted round")
    hinted: int = Field(0, description="kept records from the hinted round")
    no_correct: int = Field(0, description="finished items that kept nothing and were not easy")
    engine_failed_items: int = Field(0, description="items whose judging failed (not finished)")
    engine_failed_samples: int = 0

    def add(self, o: ItemOutcome) -> None:
        self.items_done += 1
        self.samples += o.samples
        self.kept += o.kept
        self.rejected_wrong += o.wrong
        self.rejected_unparsable += o.unparsable
        self.dropped_too_easy += o.too_easy
        self.hint_retried += o.hint_retried
        self.hinted += o.hinted_kept
        self.no_correct += o.kept == 0 and not o.too_easy

    def summary(self) -> str:
        """One human-readable line."""
        bad = sum(self.bad_input.values())
        return (
            f"items {self.items_read} (+{bad} bad lines), finished {self.items_done} "
            f"({self.resumed} resumed): kept {self.kept} of {self.samples} judgments, "
            f"rejected wrong {self.rejected_wrong}, rejected unparsable "
            f"{self.rejected_unparsable}, dropped too easy {self.dropped_too_easy}, "
            f"hint retried {self.hint_retried}, hinted kept {self.hinted}, "
            f"no correct {self.no_correct}, engine failures {self.engine_failed_items} items"
        )


def progress_path(out: str | Path) -> Path:
    """The progress log beside ``out`` (``rft.jsonl`` -> ``rft.progress.jsonl``)."""
    p = Path(out)
    return p.with_name(p.stem + ".progress.jsonl")


def counts_path(out: str | Path) -> Path:
    """Where the counts are saved beside ``out`` (``rft.jsonl`` -> ``rft.counts.json``)."""
    p = Path(out)
    return p.with_name(p.stem + ".counts.json")


def read_rft_records(path: str | Path) -> list[RFTRecord]:
    """Read the records written by ``collect``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"RFT records not found: {p}")
    out = []
    with p.open() as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(RFTRecord.model_validate_json(line))
                except ValueError as e:
                    raise ValueError(f"{p}:{line_no}: {e}") from e
    return out


def _resume(out: Path) -> dict[str, ItemOutcome]:
    """Finished items from the progress log; records of unfinished items (a run stopped between
    writing records and logging the item) are removed so the rerun does not duplicate them."""
    log = progress_path(out)
    done: dict[str, ItemOutcome] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                try:
                    o = ItemOutcome.model_validate_json(line)
                except ValueError:
                    continue  # a line cut by a crash: that item is judged again
                done[o.id] = o
    if out.is_file():
        lines = out.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("id") in done]
        if len(kept) != len([ln for ln in lines if ln.strip()]):
            out.write_text("".join(ln + "\n" for ln in kept))
    return done


def _record(item: SPCTItem, index: int, sample: Sample, hinted: bool) -> RFTRecord:
    if sample.messages is None:
        raise ValueError(
            "a judgment came back without the messages it was judged with (from a judgment "
            "cache?): collecting needs fresh judgments, so turn any judgment cache off"
        )
    assert sample.text is not None and sample.scores is not None
    return RFTRecord(
        id=item.id,
        sample_index=index,
        messages=[*sample.messages, {"role": "assistant", "content": sample.text}],
        order=list(sample.order),
        scores=list(sample.scores),
        best=item.best,
        rating=item.rating,
        hinted=hinted,
    )


async def _judge(rm: GenerativeRewardFn, item: SPCTItem, hint: bool) -> JudgmentResult | Exception:
    try:
        hint_best = item.best if hint and len(item.responses) > 1 else None
        return await rm.ascore(item.prompt, item.responses, hint_best=hint_best)
    except Exception as e:  # noqa: BLE001 - one item's failure is counted, not fatal
        return e


def _engine_failed(result: JudgmentResult | Exception) -> int | None:
    """Samples lost to the engine (None: the round is usable)."""
    if isinstance(result, Exception):
        return 1
    lost = sum(1 for s in result.samples if s.failure_kind in _ENGINE_KINDS)
    return lost or None


def _tally(
    item: SPCTItem, result: JudgmentResult, outcome: ItemOutcome, hinted: bool
) -> list[RFTRecord]:
    records = []
    for j, s in enumerate(result.samples):
        outcome.samples += 1
        if s.scores is None:
            outcome.unparsable += 1
        elif item.is_correct(s.scores):
            records.append(_record(item, j, s, hinted))
        else:
            outcome.wrong += 1
    return records


async def _collect_chunk(
    rm: GenerativeRewardFn, chunk: Sequence[SPCTItem], hint_retry: bool
) -> list[tuple[SPCTItem, ItemOutcome | None, list[RFTRecord], int]]:
    """(item, outcome or None when the engine failed, records, samples lost to the engine)."""
    first = await asyncio.gather(*(_judge(rm, it, False) for it in chunk))
    out: list[tuple[SPCTItem, ItemOutcome | None, list[RFTRecord], int]] = []
    retry: list[int] = []
    for item, res in zip(chunk, first, strict=True):
        lost = _engine_failed(res)
        if lost is not None:
            out.append((item, None, [], lost))
            continue
        assert isinstance(res, JudgmentResult)
        outcome = ItemOutcome(id=item.id)
        records = _tally(item, res, outcome, hinted=False)
        if records and len(records) == outcome.samples:
            outcome.too_easy, records = True, []
        elif not records and hint_retry:
            retry.append(len(out))
        out.append((item, outcome, records, 0))
    hinted = await asyncio.gather(*(_judge(rm, out[i][0], True) for i in retry))
    for i, res in zip(retry, hinted, strict=True):
        item, outcome, _, _ = out[i]
        assert outcome is not None
        lost = _engine_failed(res)
        if lost is not None:
            out[i] = (item, None, [], lost)
            continue
        assert isinstance(res, JudgmentResult)
        outcome.hint_retried = True
        records = _tally(item, res, outcome, hinted=True)
        outcome.kept = outcome.hinted_kept = len(records)
        out[i] = (item, outcome, records, 0)
    for _, outcome, records, _ in out:
        if outcome is not None and not outcome.hint_retried:
            outcome.kept = len(records)
    return out


def collect(
    rm: GenerativeRewardFn,
    items: Sequence[SPCTItem],
    out: str | Path,
    *,
    hint_retry: bool = False,
    chunk_size: int = 8,
    read_report: ReadReport | None = None,
    progress: bool = True,
) -> CollectCounts:
    """Judge ``items`` with ``rm`` (N = ``rm.sampling.samples`` judgments each) and append the
    correct judgments to ``out`` (JSONL of ``RFTRecord``); resumes from what ``out`` holds.

    Counts are saved to ``<out>.counts.json`` and returned. Set ``rm``'s ``parse_retries`` to 0
    for exact counts (a retry draws extra samples, which are counted like the others).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out)
    counts = CollectCounts(items_read=len(items))
    if read_report is not None:
        counts.bad_input = dict(read_report.counts)
        counts.bad_input_messages = list(read_report.messages)
    ids = {it.id for it in items}
    for o in done.values():
        if o.id in ids:
            counts.add(o)
    counts.resumed = counts.items_done
    todo = [it for it in items if it.id not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="collecting", unit="item")
    try:
        with out.open("a") as rec_f, progress_path(out).open("a") as log_f:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start : start + chunk_size]
                for _item, outcome, records, lost in run_sync(
                    _collect_chunk(rm, chunk, hint_retry)
                ):
                    if outcome is None:
                        counts.engine_failed_items += 1
                        counts.engine_failed_samples += lost
                        continue
                    for r in records:
                        rec_f.write(r.model_dump_json() + "\n")
                    rec_f.flush()
                    os.fsync(rec_f.fileno())
                    # logged after its records are on disk: a logged item is complete
                    log_f.write(outcome.model_dump_json() + "\n")
                    log_f.flush()
                    counts.add(outcome)
                if bar is not None:
                    bar.update(len(chunk))
                    bar.set_postfix(kept=counts.kept)
    finally:
        if bar is not None:
            bar.close()
        counts_path(out).write_text(counts.model_dump_json(indent=2) + "\n")
    return counts
