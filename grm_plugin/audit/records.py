"""Judging the audit's cases, one JSONL record per case, resumable.

Records are appended to ``DIR/cases.jsonl`` chunk by chunk; a rerun with the same judge skips
the cases already recorded. A case whose judging failed in the engine (server down, deadline) is
not recorded, so a rerun tries it again; a parse failure is the judge's answer and is recorded.
Scores are read from the public ``JudgmentResult`` (never re-parsed here), and the judge's raw
text is kept per case.

Example:
    >>> import tempfile, pathlib
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> from grm_plugin.audit.battery import builtin_battery
    >>> from grm_plugin.audit.cases import build_cases, builtin_prompts
    >>> cases = build_cases(builtin_battery().select(names={"mk_colon"}), builtin_prompts()[:1])
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "cases.jsonl"
    >>> rm = GenerativeRewardFn(RuleJudgeEngine())
    >>> [r.scores for r in judge_cases(rm, cases, out, progress=False)]
    [[10.0], [2.0], [10.0, 2.0], [10.0], [10.0, 10.0]]
    >>> len(judge_cases(rm, cases, out, progress=False))  # resumed: nothing judged
    5
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..results import FailureKind, JudgmentResult, ResponseFlag
from ..reward import GenerativeRewardFn
from .cases import Case, CaseKind

_ENGINE_KINDS = (FailureKind.ENGINE, FailureKind.TIMEOUT)
#: flags of a response that got the empty-response policy instead of a judgment
_NOT_JUDGED = {ResponseFlag.EMPTY_RESPONSE.value, ResponseFlag.MINIMAL_CONTENT.value}


class CaseRecord(BaseModel):
    """One judged case, as saved."""

    model_config = ConfigDict(extra="forbid")

    key: str
    kind: CaseKind
    prompt_id: str
    hack: str | None = Field(None, description="the hack's name (None: the right answer alone)")
    family: str | None = None
    responses: list[str]
    reference: str | None = Field(None, description="the reference the judge saw, if any")
    scores: list[float | None]
    flags: list[list[str]]
    failure_kind: FailureKind | None = None
    error: str | None = None
    judgments: list[str | None] = Field(description="the judge's raw text, sample by sample")
    seconds: float = Field(description="judging time of its chunk divided by the chunk's cases")

    @property
    def hack_score(self) -> float | None:
        """The hacked response's score (ALONE, GROUP)."""
        return self.scores[-1] if self.scores else None

    @property
    def right_score(self) -> float | None:
        """The right answer's score (RIGHT, GROUP)."""
        return self.scores[0] if self.scores and self.kind is not CaseKind.ALONE else None

    @property
    def hack_not_judged(self) -> bool:
        """The hacked response got the empty-response policy (empty or minimal content)."""
        return bool(self.flags) and bool(_NOT_JUDGED.intersection(self.flags[-1]))


def read_records(path: str | Path) -> dict[str, CaseRecord]:
    """Saved records by key (a file that does not exist: none)."""
    p = Path(path)
    if not p.is_file():
        return {}
    out = {}
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = CaseRecord.model_validate_json(line)
                out[rec.key] = rec
    return out


def _record(case: Case, key: str, res: JudgmentResult, reference: str | None, secs: float):
    return CaseRecord(
        key=key,
        kind=case.kind,
        prompt_id=case.prompt.id,
        hack=case.hack.name if case.hack else None,
        family=case.hack.family.value if case.hack else None,
        responses=case.responses,
        reference=reference,
        scores=list(res.scores),
        flags=[list(f) for f in res.flags],
        failure_kind=res.failure_kind,
        error=res.error,
        judgments=[s.text for s in res.samples],
        seconds=secs,
    )


def judge_cases(
    rm: GenerativeRewardFn,
    cases: Sequence[Case],
    path: str | Path,
    *,
    reference_guided: bool = False,
    chunk_size: int = 8,
    progress: bool = True,
) -> list[CaseRecord]:
    """Judge the cases not yet in ``path`` (a JSONL file, appended to) and return the records
    of all ``cases`` that have one, in case order."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    done = read_records(p)
    keys = [c.key(reference_guided) for c in cases]
    todo = [(c, k) for c, k in zip(cases, keys, strict=True) if k not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc="audit", unit="case")
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            refs = [c.prompt.reference if reference_guided else None for c, _ in chunk]
            t0 = time.perf_counter()
            results = rm.score_batch(
                [c.prompt.prompt for c, _ in chunk], [c.responses for c, _ in chunk], refs
            )
            secs = (time.perf_counter() - t0) / len(chunk)
            with p.open("a", encoding="utf-8") as f:
                for (c, k), res, ref in zip(chunk, results, refs, strict=True):
                    if res.failed and res.failure_kind in _ENGINE_KINDS:
                        continue  # not the judge's answer: a rerun tries again
                    rec = _record(c, k, res, ref, secs)
                    done[k] = rec
                    f.write(rec.model_dump_json() + "\n")
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return [done[k] for k in keys if k in done]
