"""Judge training items from verifiable problems: sample solutions, check, pair right with wrong.

For each problem (``{"id", "question", "answer"}``, field names configurable) a policy model writes
``samples`` solutions through any engine; a checker (``checkers.py``: ``numeric`` built in) labels
each right, wrong or without an answer; one right and one wrong solution become a judge item in
our JSONL format (``{"id", "source", "prompt", "responses", "best", "reference"}``, as
``gsm8k_pairs_dev.jsonl``). When no sample is right, the problem's reference solution stands in
(source ``<source>-reference-vs-model``); when no sample is wrong, the problem is skipped and
counted (nothing to tell apart). Which right and which wrong sample are paired comes from
``seed`` and the problem id; ``best``'s position is balanced in blocks of two pairs (exactly
half first, give or take one), also from ``seed``, and stays so across resumed runs.

Bad problems (bad JSON, bad UTF-8, missing question, no answer, an answer the checker cannot
read, a repeated id) are counted by reason, never fatal. The output is written problem by
problem with a progress log beside it (``<out>.progress.jsonl``): rerunning resumes, finished
problems are not sampled again, and when nothing is left the engine is never built (no model
load). Problems whose sampling failed in the engine are not logged, so a rerun tries them again.

Example:
    >>> import tempfile, pathlib
    >>> from grm_plugin.testing import TextEngine
    >>> problems = [Problem(id="p1", question="2 + 3?", answer="5", reference=5.0)]
    >>> engine = TextEngine(["2 + 3 = 5\\nA: 5", "2 + 3 = 6\\nA: 6"])
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> counts = make_pairs(problems, out, MakePairsSettings(samples=2), engine, progress=False)
    >>> counts.pairs, counts.samples_right, counts.samples_wrong
    (1, 1, 1)
    >>> item = json.loads(out.read_text())
    >>> item["responses"][item["best"]], item["source"], item["reference"]
    ('2 + 3 = 5\\nA: 5', 'make-pairs-model-vs-model', '5')
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..engines.base import GenerationRequest, JudgeEngine
from ..reward import run_sync
from .checkers import AnswerChecker, Verdict, get_checker
from .config import MakePairsSettings
from .items import ReadReport
from .progress import ItemLog, ProgressWriter, counted_run, resume, save_counts, start_counts
from .progress import counts_path as counts_path  # the run's files, named beside the run
from .progress import progress_path as progress_path


class BadProblemReason(str, Enum):
    """Why a problem line was skipped (the counts are keyed by these values)."""

    INVALID_JSON = "invalid_json"
    BAD_UTF8 = "bad_utf8"
    MISSING_FIELDS = "missing_fields"
    NO_ANSWER = "no_answer"
    UNPARSABLE_ANSWER = "unparsable_answer"
    DUPLICATE_ID = "duplicate_id"


class PairKind(str, Enum):
    """Where the right response of a pair came from."""

    MODEL_VS_MODEL = "model-vs-model"
    REFERENCE_VS_MODEL = "reference-vs-model"


class SkipReason(str, Enum):
    """Why a finished problem gave no pair."""

    NO_WRONG = "no_wrong"  # every sample right (or without an answer): nothing to tell apart
    NO_RIGHT = "no_right"  # no sample right and no reference solution to stand in


@dataclass
class Problem:
    """One problem: the question, the reference answer as given and as the checker reads it."""

    id: str
    question: str
    answer: str
    reference: Any
    solution: str | None = None


class PairItem(BaseModel):
    """One judge item, in the format ``spct collect``, ``spct rl`` and ``eval`` read."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    prompt: str
    responses: list[str]
    best: int
    reference: str


class ProblemOutcome(ItemLog):
    """One finished problem, as logged in the progress file (resume reads these back)."""

    right: int = 0
    wrong: int = 0
    no_answer: int = 0
    pair: PairKind | None = None
    skipped: SkipReason | None = None
    best: int | None = None


class MakePairsCounts(BaseModel):
    """What a make-pairs run did (cumulative over resumed runs for finished problems)."""

    problems_read: int = Field(0, description="valid problems in the input")
    bad_input: dict[str, int] = Field(default_factory=dict, description="skipped lines by reason")
    bad_input_messages: list[str] = Field(default_factory=list)
    resumed: int = Field(0, description="problems already finished in the output")
    problems_done: int = Field(0, description="problems finished, this run and earlier ones")
    samples: int = Field(0, description="solutions sampled on finished problems")
    samples_right: int = 0
    samples_wrong: int = 0
    samples_no_answer: int = Field(0, description="solutions without a final answer (unused)")
    pairs: int = Field(0, description="judge items written")
    pairs_model_vs_model: int = 0
    pairs_reference_vs_model: int = Field(0, description="no sample right: the reference stood in")
    best_first: int = Field(0, description="pairs whose right response is shown first")
    skipped_no_wrong: int = Field(0, description="problems with no wrong sample (no pair)")
    skipped_no_right: int = Field(0, description="no right sample and no reference solution")
    engine_failed_problems: int = Field(0, description="sampling failed (not finished)")

    def add(self, o: ProblemOutcome) -> None:
        self.problems_done += 1
        self.samples += o.samples
        self.samples_right += o.right
        self.samples_wrong += o.wrong
        self.samples_no_answer += o.no_answer
        if o.pair is not None:
            self.pairs += 1
            self.best_first += o.best == 0
            if o.pair is PairKind.MODEL_VS_MODEL:
                self.pairs_model_vs_model += 1
            else:
                self.pairs_reference_vs_model += 1
        self.skipped_no_wrong += o.skipped is SkipReason.NO_WRONG
        self.skipped_no_right += o.skipped is SkipReason.NO_RIGHT

    def summary(self) -> str:
        """One human-readable line."""
        bad = sum(self.bad_input.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.bad_input.items())) or "none"
        return (
            f"problems {self.problems_read} (+{bad} bad: {reasons}), finished "
            f"{self.problems_done} ({self.resumed} resumed): {self.samples} solutions "
            f"(right {self.samples_right}, wrong {self.samples_wrong}, no answer "
            f"{self.samples_no_answer}); pairs {self.pairs} (model vs model "
            f"{self.pairs_model_vs_model}, reference vs model {self.pairs_reference_vs_model}, "
            f"best first {self.best_first}); skipped: no wrong {self.skipped_no_wrong}, no right "
            f"{self.skipped_no_right}; engine failures {self.engine_failed_problems} problems"
        )


def _text(value: Any) -> str | None:
    """A field as text: strings stripped, numbers written out, anything else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else repr(value)
    return value.strip() if isinstance(value, str) else None


def read_problems(
    path: str | Path,
    settings: MakePairsSettings | None = None,
    checker: AnswerChecker | None = None,
    limit: int | None = None,
) -> tuple[list[Problem], ReadReport]:
    """Read problems (JSONL; field names from ``settings``); every bad line is skipped and
    reported with file and line. A problem without an id gets one from a hash of its question
    (stable across runs, so a resumed run finds it).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "problems.jsonl"
        >>> _ = p.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\\n{"id": "b"}\\n')
        >>> problems, report = read_problems(p)
        >>> [x.id for x in problems], dict(report.counts)
        (['a'], {'missing_fields': 1})
    """
    settings = settings or MakePairsSettings()
    checker = checker or get_checker(settings.checker)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"problems not found: {p}")
    problems: list[Problem] = []
    report = ReadReport()
    seen: set[str] = set()
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{p}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.add(BadProblemReason.BAD_UTF8, f"{where}: {e}")
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                report.add(BadProblemReason.INVALID_JSON, f"{where}: {e}")
                continue
            if not isinstance(data, dict):
                report.add(BadProblemReason.INVALID_JSON, f"{where}: not a JSON object")
                continue
            question = _text(data.get(settings.question_field))
            if not question:
                report.add(
                    BadProblemReason.MISSING_FIELDS,
                    f"{where}: no {settings.question_field!r} text",
                )
                continue
            answer = _text(data.get(settings.answer_field))
            if not answer:
                report.add(BadProblemReason.NO_ANSWER, f"{where}: no {settings.answer_field!r}")
                continue
            reference = checker.reference(answer)
            if reference is None:
                report.add(
                    BadProblemReason.UNPARSABLE_ANSWER,
                    f"{where}: the checker cannot read the answer {answer[:40]!r}",
                )
                continue
            pid = _text(data.get(settings.id_field))
            if not pid:
                pid = "sha-" + hashlib.sha256(question.encode()).hexdigest()[:16]
            if pid in seen:
                report.add(BadProblemReason.DUPLICATE_ID, f"{where}: id {pid!r} seen before")
                continue
            seen.add(pid)
            solution = _text(data.get(settings.solution_field)) if settings.solution_field else None
            problems.append(Problem(pid, question, answer, reference, solution or None))
            if limit is not None and len(problems) >= limit:
                break
    return problems, report


def _resume(out: Path) -> tuple[dict[str, ProblemOutcome], list[PairItem]]:
    """Finished problems from the progress log and their pairs from ``out``. A cut line (a run
    killed mid-write) is dropped, pairs of unfinished problems are removed, a finished problem
    whose pair was lost is sampled again; both files are rewritten clean so appends line up."""
    log = progress_path(out)
    if out.is_file() and out.stat().st_size and not log.is_file():
        raise FileExistsError(
            f"{out} exists but has no progress log beside it ({log.name}): it was not written "
            "by make-pairs, so it is left alone; choose another --out"
        )
    done, items = resume(
        out,
        ProblemOutcome.model_validate_json,
        PairItem.model_validate_json,
        drop_broken_records=True,
    )
    pairs = {it.id: it for it in items}
    for pid in [pid for pid, o in done.items() if o.pair is not None and pid not in pairs]:
        del done[pid]
    if out.is_file() or log.is_file():
        out.write_text("".join(it.model_dump_json() + "\n" for it in pairs.values()))
        log.write_text("".join(o.model_dump_json() + "\n" for o in done.values()))
    return done, list(pairs.values())


def best_position(index: int, seed: int) -> int:
    """Where the right response goes in the ``index``-th pair: each block of two pairs gets one
    of each, in an order drawn from ``seed`` (balanced, and the same on a resumed run).

    Example:
        >>> sorted(best_position(i, seed=3) for i in range(6))
        [0, 0, 0, 1, 1, 1]
    """
    first = random.Random(f"{seed}:block:{index // 2}").random() < 0.5
    return int(first) if index % 2 == 0 else int(not first)


async def _sample(
    engine: JudgeEngine,
    problem: Problem,
    settings: MakePairsSettings,
    request_timeout: float | None,
) -> list[str] | Exception:
    content = settings.instruction.replace("{question}", problem.question)
    request = GenerationRequest(
        messages=[{"role": "user", "content": content}],
        n=settings.samples,
        temperature=settings.temperature,
        max_tokens=settings.max_new_tokens,
        # no generation seed: with parallel requests one seed would give n identical solutions
        request_timeout=request_timeout,
    )
    try:
        texts = await engine.generate(request)
    except Exception as e:  # noqa: BLE001 - one problem's failure is counted, not fatal
        return e
    if len(texts) != settings.samples:
        return RuntimeError(f"engine returned {len(texts)} texts for n={settings.samples}")
    return [t.strip() for t in texts]


def _pair(
    problem: Problem,
    texts: Sequence[str],
    checker: AnswerChecker,
    settings: MakePairsSettings,
    index: int,
) -> tuple[ProblemOutcome, PairItem | None]:
    """The outcome of one sampled problem and its pair (``index``: pairs written before it)."""
    outcome = ProblemOutcome(id=problem.id, samples=len(texts))
    right: list[str] = []
    wrong: list[str] = []
    for text in texts:
        verdict = checker.check(text, problem.reference) if text else Verdict.NO_ANSWER
        if verdict is Verdict.RIGHT:
            right.append(text)
        elif verdict is Verdict.WRONG:
            wrong.append(text)
        else:
            outcome.no_answer += 1
    outcome.right, outcome.wrong = len(right), len(wrong)
    if not wrong:
        outcome.skipped = SkipReason.NO_WRONG
        return outcome, None
    rng = random.Random(f"{settings.seed}:{problem.id}")
    if right:
        good, outcome.pair = rng.choice(right), PairKind.MODEL_VS_MODEL
    elif problem.solution:
        good = settings.reference_format.replace("{solution}", problem.solution).replace(
            "{answer}", problem.answer
        )
        outcome.pair = PairKind.REFERENCE_VS_MODEL
    else:
        outcome.skipped = SkipReason.NO_RIGHT
        return outcome, None
    bad = rng.choice(wrong)
    best = best_position(index, settings.seed)
    outcome.best = best
    responses = [good, bad] if best == 0 else [bad, good]
    item = PairItem(
        id=problem.id,
        source=f"{settings.source}-{outcome.pair.value}",
        prompt=problem.question,
        responses=responses,
        best=best,
        reference=problem.answer,
    )
    return outcome, item


def make_pairs(
    problems: Sequence[Problem],
    out: str | Path,
    settings: MakePairsSettings | None = None,
    engine: JudgeEngine | Callable[[], JudgeEngine] | None = None,
    *,
    checker: AnswerChecker | None = None,
    read_report: ReadReport | None = None,
    request_timeout: float | None = None,
    progress: bool = True,
) -> MakePairsCounts:
    """Sample ``settings.samples`` solutions per problem from ``engine`` (an engine, or a
    function that builds one: called only when a problem is left to sample), pair right with
    wrong and append the items to ``out``; resumes from what ``out`` holds.

    Counts are saved to ``<out>.counts.json`` and returned.
    """
    settings = settings or MakePairsSettings()
    checker = checker or get_checker(settings.checker)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, written = _resume(out)
    counts = MakePairsCounts(problems_read=len(problems))
    counts.resumed = start_counts(counts, done.values(), {p.id for p in problems}, read_report)
    index = len(written)  # balance best's position over every pair in the file
    todo = [p for p in problems if p.id not in done]
    save_counts(out, counts)
    if not todo:
        return counts
    if engine is None:
        from ..engines import make_engine

        engine = lambda: make_engine(None)  # noqa: E731 - the embedded default model
    owned = not isinstance(engine, JudgeEngine)
    judge_engine = engine() if owned else engine
    try:
        with (
            counted_run(
                out, counts, total=len(todo), desc="making pairs", unit="problem", progress=progress
            ) as bar,
            ProgressWriter(out) as writer,
        ):
            for start in range(0, len(todo), settings.chunk_size):
                chunk = todo[start : start + settings.chunk_size]
                sampled = run_sync(
                    _gather(judge_engine, chunk, settings, request_timeout)  # type: ignore[arg-type]
                )
                for problem, texts in zip(chunk, sampled, strict=True):
                    if isinstance(texts, Exception):
                        counts.engine_failed_problems += 1
                        continue
                    outcome, item = _pair(problem, texts, checker, settings, index)
                    written_now = [] if item is None else [item]
                    writer.write(written_now, outcome)
                    index += len(written_now)
                    counts.add(outcome)
                bar.update(len(chunk))
                bar.set_postfix(pairs=counts.pairs)
    finally:
        if owned:
            run_sync(judge_engine.aclose())  # type: ignore[union-attr]
    return counts


async def _gather(
    engine: JudgeEngine,
    chunk: Sequence[Problem],
    settings: MakePairsSettings,
    request_timeout: float | None,
) -> list[list[str] | Exception]:
    return list(
        await asyncio.gather(*(_sample(engine, p, settings, request_timeout) for p in chunk))
    )
