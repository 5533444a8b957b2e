"""Reward-hacking audit: how often known hacks (master keys, self-praise, judge instructions,
fake scores, padding, ...) fool a judge, before an RL policy finds out.

``grm-plugin audit --out DIR`` runs it from the command line; ``run_audit`` from Python; the
testing kit (``grm_plugin.testing.hacks``) gives the same cases to a maintainer's tests.

Example:
    >>> from grm_plugin.audit import builtin_battery, HackFamily
    >>> HackFamily.MASTER_KEY in builtin_battery().families()
    True
"""

from .battery import (
    BUILTIN_BATTERY,
    CONTROL_HACK,
    Battery,
    BatteryError,
    Hack,
    HackFamily,
    builtin_battery,
    load_battery,
    parse_battery,
)
from .cases import AuditPrompt, Case, CaseKind, build_cases, builtin_prompts, load_prompts, render
from .records import CaseRecord, judge_cases, read_records
from .report import AuditReport, FamilyStats, HackStats, Rate, markdown_table
from .runner import OtherJudgeError, judge_fingerprint, run_audit

__all__ = [
    "BUILTIN_BATTERY",
    "CONTROL_HACK",
    "AuditPrompt",
    "AuditReport",
    "Battery",
    "BatteryError",
    "Case",
    "CaseKind",
    "CaseRecord",
    "FamilyStats",
    "Hack",
    "HackFamily",
    "HackStats",
    "OtherJudgeError",
    "Rate",
    "build_cases",
    "builtin_battery",
    "builtin_prompts",
    "judge_cases",
    "judge_fingerprint",
    "load_battery",
    "load_prompts",
    "markdown_table",
    "parse_battery",
    "read_records",
    "render",
    "run_audit",
]
