"""Run an audit: judge every case (resuming), then compute the report.

Example:
    >>> import tempfile
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> from grm_plugin.audit import builtin_battery, builtin_prompts
    >>> battery = builtin_battery().select(families={"length_padding"})
    >>> report = run_audit(GenerativeRewardFn(RuleJudgeEngine()), battery, builtin_prompts()[:5],
    ...                    tempfile.mkdtemp(), progress=False, plot=False)
    >>> report.failing  # length_score prefers long answers: padding is a hack for it
    ['padding_elaboration', 'padding_list']
"""

from __future__ import annotations

import time
from pathlib import Path

from ..cache import fingerprint
from ..reward import GenerativeRewardFn
from .battery import Battery
from .cases import AuditPrompt, build_cases
from .records import judge_cases, read_records
from .report import AuditReport, family_stats, hack_stats, write_report

#: the per-case records, beside the report
RECORDS_FILE = "cases.jsonl"
#: the fingerprint of the judge whose records the folder holds
JUDGE_FILE = "judge.txt"


def judge_fingerprint(rm: GenerativeRewardFn) -> str:
    """What makes two judges' records interchangeable: engine, sampling, prompt and policies."""
    return fingerprint(
        getattr(rm, "_engine_spec", None) or type(rm.engine).__qualname__,
        rm.sampling,
        rm.principles,
        str(rm.template),
        rm.empty_response_score,
        getattr(rm, "minimal_content", False),
    )


def run_audit(
    rm: GenerativeRewardFn | None,
    battery: Battery,
    prompts: list[AuditPrompt],
    out: str | Path,
    *,
    reference_guided: bool = False,
    max_rate: float = 0.1,
    prompt_source: str = "built-in",
    judge_config: dict | None = None,
    progress: bool = True,
    plot: bool = True,
    chunk_size: int = 8,
) -> AuditReport:
    """Judge the battery on ``prompts`` with ``rm`` (records in ``out/cases.jsonl``, resumed),
    write ``audit.json``, ``audit.md`` and ``audit.png`` to ``out`` and return the report.

    ``rm`` None: no judging, the report from the records already there."""
    cases = build_cases(battery, prompts)
    path = Path(out) / RECORDS_FILE
    t0 = time.perf_counter()
    if rm is not None:
        claim_folder(out, judge_fingerprint(rm))
        records = judge_cases(
            rm,
            cases,
            path,
            reference_guided=reference_guided,
            chunk_size=chunk_size,
            progress=progress,
        )
    else:
        saved = read_records(path)
        keys = [c.key(reference_guided) for c in cases]
        records = [saved[k] for k in keys if k in saved]
    elapsed = time.perf_counter() - t0
    stats = hack_stats(records, max_rate)
    timing = {"this_run_seconds": elapsed}
    if records:
        timing["judging_seconds_all_runs"] = sum(r.seconds for r in records)
        timing["seconds_per_case"] = timing["judging_seconds_all_runs"] / len(records)
    report = AuditReport(
        battery_version=battery.version,
        battery_sources=battery.sources,
        prompt_source=prompt_source,
        prompts=len(prompts),
        reference_guided=reference_guided,
        minimal_content=bool(getattr(rm, "minimal_content", False))
        if rm is not None
        else bool((judge_config or {}).get("minimal_content", False)),
        max_rate=max_rate,
        cases=len(cases),
        cases_recorded=len(records),
        hacks=stats,
        families=family_stats(stats),
        failing=[s.name for s in stats if s.exceeds],
        timing=timing,
        judge=judge_config or {},
    )
    write_report(report, out, plot=plot)
    return report


class OtherJudgeError(ValueError):
    """The audit folder holds records of another judge (or judge settings)."""


def claim_folder(out: str | Path, judge_id: str) -> None:
    """Mark ``out`` as this judge's audit folder (``judge.txt``); records of another judge are
    never mixed in: that is an error naming the folder."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    f = d / JUDGE_FILE
    if f.is_file() and f.read_text().strip() != judge_id:
        raise OtherJudgeError(
            f"{d} holds an audit by another judge or other judge settings (engine, sampling, "
            "template, empty-response policy, minimal-content rule); use another --out, or "
            "delete the folder to start over"
        )
    f.write_text(judge_id + "\n")
