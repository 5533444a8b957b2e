"""Rejective fine-tuning data: sample N judgments per item, keep only the correct ones.

Judging goes through ``GenerativeRewardFn`` itself (production prompt, response shuffling, fences,
truncation and parser), and each kept record holds the exact messages that sample was judged with.
Items where all N were correct are dropped (too easy). With ``hint_retry``, items where none was
correct get one more round whose prompt names the best response; what it keeps is marked hinted.

Items are judged concurrently (``chunk_size`` at once) and each one is written as soon as it is
judged, with a progress log beside the output (``<out>.progress.jsonl``): a run stopped midway is
resumed by running it again, and finished items are not judged again. Items whose judging failed
in the engine are not logged, so a rerun tries them again. A last line cut by a kill or a full
disk is dropped on resume (with a warning naming the file); a broken line elsewhere is an error
naming file and line.

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
import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..benchmark_data.rows import text_lines
from ..results import FailureKind, JudgmentResult, Sample
from ..reward import GenerativeRewardFn, run_sync
from .items import ReadReport, SPCTItem
from .progress import ItemLog, ProgressWriter, counted_run, resume, start_counts
from .progress import counts_path as counts_path  # the run's files, named beside the run
from .progress import progress_path as progress_path

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


class ItemOutcome(ItemLog):
    """One finished item, as logged in the progress file (resume reads these back)."""

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


def read_rft_records(path: str | Path) -> list[RFTRecord]:
    """Read the records written by ``collect``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"RFT records not found: {p}")
    out = []
    for line in text_lines(p):
        if line.error is not None:
            raise ValueError(line.error)
        if line.text.strip():
            try:
                out.append(RFTRecord.model_validate_json(line.text))
            except ValueError as e:
                raise ValueError(f"{p}:{line.number}: {e}") from e
    return out


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


async def _collect_item(
    rm: GenerativeRewardFn,
    item: SPCTItem,
    hint_rm: GenerativeRewardFn | None,
    drop_too_easy: bool = True,
) -> tuple[ItemOutcome | None, list[RFTRecord], int]:
    """(outcome or None when the engine failed, records, samples lost to the engine)."""
    res = await _judge(rm, item, False)
    lost = _engine_failed(res)
    if lost is not None:
        return None, [], lost
    assert isinstance(res, JudgmentResult)
    outcome = ItemOutcome(id=item.id)
    records = _tally(item, res, outcome, hinted=False)
    if drop_too_easy and records and len(records) == outcome.samples:
        outcome.too_easy, records = True, []
    elif not records and hint_rm is not None:
        hinted = await _judge(hint_rm, item, True)
        lost = _engine_failed(hinted)
        if lost is not None:
            return None, [], lost
        assert isinstance(hinted, JudgmentResult)
        outcome.hint_retried = True
        records = _tally(item, hinted, outcome, hinted=True)
        outcome.hinted_kept = len(records)
    outcome.kept = len(records)
    return outcome, records, 0


def _hint_judge(rm: GenerativeRewardFn, samples: int | None) -> GenerativeRewardFn:
    """The judge of the hinted round: ``rm`` itself, or a copy drawing ``samples`` judgments
    (the same engine, prompt and parser)."""
    if samples is None or samples == rm.sampling.samples:
        return rm
    hint_rm = copy.copy(rm)
    hint_rm.sampling = rm.sampling.model_copy(update={"samples": samples})
    hint_rm.__dict__.pop("_judge_identity", None)  # its sampling differs: another cache identity
    return hint_rm


async def _collect_all(
    rm: GenerativeRewardFn,
    todo: Sequence[SPCTItem],
    hint_rm: GenerativeRewardFn | None,
    concurrency: int,
    on_done: Callable[[ItemOutcome | None, list[RFTRecord], int], None],
    drop_too_easy: bool = True,
) -> None:
    """Judge ``todo`` with at most ``concurrency`` items in flight and hand each item to
    ``on_done`` as soon as it is judged (so it is on disk before slower items finish)."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(item: SPCTItem) -> tuple[ItemOutcome | None, list[RFTRecord], int]:
        async with gate:
            return await _collect_item(rm, item, hint_rm, drop_too_easy)

    tasks = [asyncio.ensure_future(one(it)) for it in todo]
    try:
        for next_done in asyncio.as_completed(tasks):
            on_done(*await next_done)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def collect(
    rm: GenerativeRewardFn | Callable[[], GenerativeRewardFn],
    items: Sequence[SPCTItem],
    out: str | Path,
    *,
    hint_retry: bool = False,
    hint_samples: int | None = None,
    chunk_size: int = 8,
    drop_too_easy: bool = True,
    read_report: ReadReport | None = None,
    progress: bool = True,
) -> CollectCounts:
    """Judge ``items`` with ``rm`` (N = ``rm.sampling.samples`` judgments each) and append the
    correct judgments to ``out`` (JSONL of ``RFTRecord``); resumes from what ``out`` holds.
    With ``hint_retry``, items with no correct judgment get a hinted round of ``hint_samples``
    judgments (None: N, as the plain round). With ``drop_too_easy`` (the paper's choice), an
    item whose N judgments were all correct keeps none of them: it teaches nothing the base
    judge does not already do, and would fill the data with the easiest items.

    ``rm`` may be a function that builds the judge: it is called only when some item is left to
    judge, so a finished run resumed does not load a model. ``chunk_size`` items are judged at
    once; each is written (records, then its progress line) as soon as it is judged.

    Counts are saved to ``<out>.counts.json`` and returned. Set ``rm``'s ``parse_retries`` to 0
    for exact counts (a retry draws extra samples, which are counted like the others).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # records of unfinished items are removed, so a rerun does not duplicate them
    done, _ = resume(out, ItemOutcome.model_validate_json, json.loads)
    counts = CollectCounts(items_read=len(items))
    counts.resumed = start_counts(counts, done.values(), {it.id for it in items}, read_report)
    todo = [it for it in items if it.id not in done]
    with counted_run(
        out, counts, total=len(todo), desc="collecting", unit="item", progress=progress
    ) as bar:
        if todo:
            judge = rm if hasattr(rm, "ascore") else rm()  # type: ignore[operator]
            with ProgressWriter(out) as writer:

                def on_done(
                    outcome: ItemOutcome | None, records: list[RFTRecord], lost: int
                ) -> None:
                    if outcome is None:
                        counts.engine_failed_items += 1
                        counts.engine_failed_samples += lost
                    else:
                        writer.write(records, outcome)
                        counts.add(outcome)
                    bar.update(1)
                    bar.set_postfix(kept=counts.kept)

                hint_rm = _hint_judge(judge, hint_samples) if hint_retry else None
                run_sync(_collect_all(judge, todo, hint_rm, chunk_size, on_done, drop_too_easy))
    return counts
