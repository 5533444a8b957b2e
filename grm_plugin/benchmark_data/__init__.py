"""Public reward benchmarks as preference items: RewardBench, RewardBench 2, JudgeBench,
PPE correctness, RMB, LLMBar and our own JSONL, from a local .jsonl/.json/.parquet file or a
hub dataset id. ``grm-plugin eval`` uses this; every bad row is an error naming the file, the
line (or row) and the field.

Example:
    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = p.write_text(json.dumps({"prompt": "2+2?", "responses": ["4", "5"], "best": 0}) + "\\n")
    >>> bench = load_benchmark(p)
    >>> bench.format.value, bench.items[0].id, bench.items[0].best
    ('grm-plugin', 'pairs-1', 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..meta_rm_data import PreferenceItem
from .readers import READERS, Format, Overall, Reader, ReaderOptions, detect_format
from .rows import BenchmarkDataError, Row, Where, read_rows
from .scoring import headline, rewardbench_sections

__all__ = [
    "READERS",
    "Benchmark",
    "BenchmarkDataError",
    "Format",
    "Overall",
    "Reader",
    "ReaderOptions",
    "Row",
    "Where",
    "detect_format",
    "headline",
    "load_benchmark",
    "read_rows",
    "rewardbench_sections",
]


@dataclass
class Benchmark:
    """Items read from one source, with the rule for its headline number."""

    source: str
    format: Format
    items: list[PreferenceItem]
    overall: Overall
    #: rows that gave no item (PPE rows all right or all wrong; invalid rows with strict=False)
    skipped: int = 0
    #: the first few reasons rows were skipped as invalid
    skipped_reasons: list[str] = field(default_factory=list)
    notes: str = ""


def load_benchmark(
    source: str | Path,
    *,
    format: Format | str | None = None,
    split: str | None = None,
    config: str | None = None,
    limit: int | None = None,
    subsets: set[str] | None = None,
    strict: bool = True,
    options: ReaderOptions | None = None,
) -> Benchmark:
    """Read ``source`` (a file, or a hub id such as ``allenai/reward-bench``) as ``format``
    (detected from the first row's columns when None).

    ``limit`` keeps the first N items (after ``subsets`` filtering). ``strict=False`` skips bad
    rows instead of raising, counting them in ``skipped``. A requested subset with no item, or
    a source with no item at all, is an error.
    """
    opts = options or ReaderOptions()
    fmt = Format(format) if format is not None else None
    rows = read_rows(source, split=split, config=config)
    reader: Reader | None = READERS[fmt] if fmt is not None else None
    if reader is not None and split is None and reader.hub_split and not Path(source).exists():
        rows = read_rows(source, split=reader.hub_split, config=config)
    items: list[PreferenceItem] = []
    skipped, reasons = 0, []
    for row in rows:
        if reader is None:
            reader = READERS[detect_format(row)]
        try:
            reader.check_columns(row)
            got = reader.convert(row, opts)
        except BenchmarkDataError as e:
            if strict:
                raise
            skipped += 1
            if len(reasons) < 5:
                reasons.append(str(e))
            continue
        if not got:
            skipped += 1
        items += [it for it in got if subsets is None or it.subset in subsets]
        if limit is not None and len(items) >= limit:
            items = items[:limit]
            break
    if reader is None:
        raise BenchmarkDataError(f"{source}: no rows")
    if subsets:
        found = {it.subset for it in items}
        missing = sorted(s for s in subsets if s not in found)
        if missing and limit is None:
            raise BenchmarkDataError(f"{source}: subset {missing[0]!r} has no items")
    if not items:
        raise BenchmarkDataError(f"{source}: no items (skipped {skipped} rows)")
    ids: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in ids:
            raise BenchmarkDataError(
                f"{source}: id {it.id!r} is used by two items (items {ids[it.id] + 1} and {i + 1})"
            )
        ids[it.id] = i
    return Benchmark(
        source=str(source),
        format=reader.format,
        items=items,
        overall=reader.overall,
        skipped=skipped,
        skipped_reasons=reasons,
        notes=reader.notes,
    )
