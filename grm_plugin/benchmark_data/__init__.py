"""Public reward benchmarks as preference items: RewardBench, RewardBench 2, JudgeBench,
PPE correctness, RMB, LLMBar and our own JSONL, from a local .jsonl/.json/.parquet file or a
hub dataset id. ``grm-plugin eval`` uses this; every bad row is an error naming the file, the
line (or row) and the field. Rows that cannot be a test (an empty or a duplicated response, a
row repeated) are skipped with a count and a warning, since real files hold a few; ``strict``
stops at them too.

Example:
    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = p.write_text(json.dumps({"prompt": "2+2?", "responses": ["4", "5"], "best": 0}) + "\\n")
    >>> bench = load_benchmark(p)
    >>> bench.format.value, bench.items[0].id, bench.items[0].best
    ('grm-plugin', 'pairs-1', 0)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..items import PreferenceItem
from .readers import READERS, Format, Overall, Reader, ReaderOptions, detect_format
from .rows import (
    BenchmarkDataError,
    DegenerateRowError,
    Row,
    TextLine,
    Where,
    read_rows,
    read_text,
    text_lines,
)
from .scoring import headline, rewardbench_sections

__all__ = [
    "READERS",
    "Benchmark",
    "BenchmarkDataError",
    "DegenerateRowError",
    "Format",
    "Overall",
    "Reader",
    "ReaderOptions",
    "Row",
    "TextLine",
    "Where",
    "detect_format",
    "headline",
    "load_benchmark",
    "read_rows",
    "read_text",
    "rewardbench_sections",
    "text_lines",
]

log = logging.getLogger(__name__)


@dataclass
class Benchmark:
    """Items read from one source, with the rule for its headline number."""

    source: str
    format: Format
    items: list[PreferenceItem]
    overall: Overall
    #: rows that gave no item (PPE rows all right or all wrong, degenerate rows, and invalid
    #: rows with skip_invalid)
    skipped: int = 0
    #: of them: rows with an empty or duplicated response, or repeated (skipped unless strict)
    skipped_degenerate: int = 0
    #: the first few reasons rows were skipped
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
    strict: bool = False,
    skip_invalid: bool = False,
    options: ReaderOptions | None = None,
) -> Benchmark:
    """Read ``source`` (a file, or a hub id such as ``allenai/reward-bench``) as ``format``
    (detected from the first row's columns when None).

    ``limit`` keeps the first N items (after ``subsets`` filtering). Rows that cannot be a test
    (an empty or duplicated response, a row repeated with the same id) are skipped, counted in
    ``skipped_degenerate`` and logged as one warning; ``strict=True`` raises at the first one
    instead. Any other bad row raises, or with ``skip_invalid=True`` is skipped and counted in
    ``skipped``. A requested subset with no item, or a source with no item at all, is an error.
    """
    if strict and skip_invalid:
        raise ValueError("strict and skip_invalid contradict each other")
    opts = options or ReaderOptions()
    fmt = Format(format) if format is not None else None
    rows = read_rows(source, split=split, config=config)
    reader: Reader | None = READERS[fmt] if fmt is not None else None
    if reader is not None and split is None and reader.hub_split and not Path(source).exists():
        rows = read_rows(source, split=reader.hub_split, config=config)
    items: list[PreferenceItem] = []
    skipped, degenerate, reasons, first_degenerate = 0, 0, [], ""
    ids: dict[str, int] = {}
    for row in rows:
        if reader is None:
            reader = READERS[detect_format(row)]
        try:
            reader.check_columns(row)
            got = _unique(reader.convert(row, opts), ids, items, row.where)
        except DegenerateRowError as e:
            if strict:
                raise
            skipped, degenerate = skipped + 1, degenerate + 1
            first_degenerate = first_degenerate or str(e)
            if len(reasons) < 5:
                reasons.append(str(e))
            continue
        except BenchmarkDataError as e:
            if not skip_invalid:
                raise
            skipped += 1
            if len(reasons) < 5:
                reasons.append(str(e))
            continue
        if not got:
            skipped += 1
        for it in got:
            if subsets is None or it.subset in subsets:
                ids[it.id] = len(items)
                items.append(it)
        if limit is not None and len(items) >= limit:
            items = items[:limit]
            break
    if reader is None:
        raise BenchmarkDataError(f"{source}: no rows")
    if degenerate:
        log.warning(
            "%s: skipped %d rows with an empty or duplicated response, or repeated (first: %s); "
            "--strict (strict=True) stops at them instead",
            source,
            degenerate,
            first_degenerate,
        )
    if subsets:
        found = {it.subset for it in items}
        missing = sorted(s for s in subsets if s not in found)
        if missing and limit is None:
            raise BenchmarkDataError(f"{source}: subset {missing[0]!r} has no items")
    if not items:
        raise BenchmarkDataError(f"{source}: no items (skipped {skipped} rows)")
    return Benchmark(
        source=str(source),
        format=reader.format,
        items=items,
        overall=reader.overall,
        skipped=skipped,
        skipped_degenerate=degenerate,
        skipped_reasons=reasons,
        notes=reader.notes,
    )


def _unique(
    got: list[PreferenceItem], ids: dict[str, int], items: list[PreferenceItem], where: Where
) -> list[PreferenceItem]:
    """``got``, when no id in it was used before: a row repeated (same id, same item) cannot be
    a second test; the same id on a different item is an error, since ids key saved samples."""
    for it in got:
        if it.id not in ids:
            continue
        first = ids[it.id] + 1
        if items[ids[it.id]] == it:
            raise where.degenerate(None, f"repeats item {first} (id {it.id!r})")
        raise where.error(None, f"id {it.id!r} is used by two items (items {first} and this one)")
    return got
