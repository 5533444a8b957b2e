"""Copy one audit folder's case records into another's (same judge), so that two lanes that
judged different families of one audit give one report.

    python results/audit/hack_negatives/merge_cases.py SRC_DIR DST_DIR

Both folders must hold the same judge (``judge.txt``). Only whole lines of SRC are read, so it is
safe while SRC's audit is still writing; a key DST already has is not copied again. The audit run
on DST afterwards finds these cases recorded and judges only what is still missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grm_plugin.audit.records import CaseRecord, read_records
from grm_plugin.audit.runner import JUDGE_FILE, RECORDS_FILE
from grm_plugin.spct.progress import read_finished_lines


def merge(src: Path, dst: Path) -> int:
    """Append SRC's records that DST lacks; return how many were copied."""
    if (src / JUDGE_FILE).read_text() != (dst / JUDGE_FILE).read_text():
        raise SystemExit(f"{src} and {dst} hold audits of different judges; not merged")
    have = read_records(dst / RECORDS_FILE)
    new = []
    for rec in read_finished_lines(src / RECORDS_FILE, CaseRecord.model_validate_json):
        if rec.key not in have:
            have[rec.key] = rec
            new.append(rec.model_dump_json() + "\n")
    with (dst / RECORDS_FILE).open("a", encoding="utf-8") as f:
        f.writelines(new)
    return len(new)


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    print(f"{merge(src, dst)} case records copied from {src} to {dst}")
