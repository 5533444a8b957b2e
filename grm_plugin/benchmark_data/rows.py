"""Raw rows of a benchmark with their location (file and line, or row number), from a local file
(.jsonl, .json, .parquet) or a hub dataset id. Readers turn rows into items; every error they
raise names the row's location. ``text_lines`` and ``read_text`` decode UTF-8 naming the file
and line of a bad byte; every JSONL/JSON reader of the package (benchmarks, SPCT items) reads
through them.

Example:
    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text(json.dumps({"a": 1}) + "\\n\\n" + json.dumps({"a": 2}) + "\\n")
    >>> [(str(r.where), r.data["a"]) for r in read_rows(p)]  # doctest: +ELLIPSIS
    [('...d.jsonl:1', 1), ('...d.jsonl:3', 2)]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BenchmarkDataError(ValueError):
    """Bad benchmark input; the message names the file, the line (or row) and the field."""


class DegenerateRowError(BenchmarkDataError):
    """A row that cannot be a test (an empty or a duplicated response, a row repeated): real
    benchmark files hold a few, so they are skipped with a warning unless ``strict``."""


def _bad_utf8(path: Path, raw: bytes, e: UnicodeDecodeError, first_line: int) -> str:
    """``path:line: not valid UTF-8 ...`` for the bad byte at ``e.start`` of ``raw``."""
    line = first_line + raw.count(b"\n", 0, e.start)
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    byte = raw[e.start : e.start + 1].hex()
    return f"{path}:{line}: not valid UTF-8 (byte 0x{byte} at column {column}: {e.reason})"


@dataclass(frozen=True)
class TextLine:
    """One line of a text file: its number, its text, or why it could not be decoded."""

    number: int
    text: str
    error: str | None = None


def text_lines(path: str | Path) -> Iterator[TextLine]:
    """The lines of a UTF-8 file, numbered from 1; a line with a bad byte comes with ``error``
    (``file:line: not valid UTF-8 ...``) and empty text, so a caller can skip or stop on it.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"
    >>> _ = p.write_bytes(b'{"a": 1}\\n{"a": "\\xff"}\\n')
    >>> [(ln.number, ln.error is None) for ln in text_lines(p)]
    [(1, True), (2, False)]
    """
    p = Path(path)
    with p.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield TextLine(number, raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield TextLine(number, "", _bad_utf8(p, raw, e, number))


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file; a bad byte is a ``BenchmarkDataError`` naming the file and line."""
    p = Path(path)
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BenchmarkDataError(_bad_utf8(p, raw, e, 1)) from None


@dataclass(frozen=True)
class Where:
    """Where a row came from: ``source`` (file path or hub id), a line number for text files,
    or a 0-based row number for parquet files and hub datasets."""

    source: str
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        return f"{self.source} row {self.row}"

    def error(self, field: str | None, message: str) -> BenchmarkDataError:
        """An error for this row (and field, if given)."""
        at = f" field {field!r}:" if field else ""
        return BenchmarkDataError(f"{self}:{at} {message}")

    def degenerate(self, field: str | None, message: str) -> DegenerateRowError:
        """An error for a row that cannot be a test (skipped by default, see ``strict``)."""
        at = f" field {field!r}:" if field else ""
        return DegenerateRowError(f"{self}:{at} {message}")


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from."""

    data: dict[str, Any]
    where: Where


def _jsonl(path: Path) -> Iterator[Row]:
    for line in text_lines(path):
        if line.error is not None:
            raise BenchmarkDataError(line.error)
        if not line.text.strip():
            continue
        where = Where(str(path), line=line.number)
        try:
            data = json.loads(line.text)
        except json.JSONDecodeError as e:
            raise where.error(None, f"not valid JSON ({e.msg})") from e
        if not isinstance(data, dict):
            raise where.error(None, f"expected a JSON object, got {type(data).__name__}")
        yield Row(data, where)


def _json(path: Path) -> Iterator[Row]:
    """A JSON array of objects (RMB, LLMBar) or a JSON-lines file saved as .json; each object
    gets the line it starts on, found by decoding the array element by element."""
    text = read_text(path)
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        yield from _jsonl(path)
        return
    decoder = json.JSONDecoder()
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise Where(str(path), line=text.count("\n") + 1).error(None, "unterminated JSON array")
        if text[pos] == "]":
            return
        where = Where(str(path), line=text.count("\n", 0, pos) + 1)
        try:
            data, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise where.error(None, f"not valid JSON ({e.msg})") from e
        if not isinstance(data, dict):
            raise where.error(None, f"expected a JSON object, got {type(data).__name__}")
        yield Row(data, where)


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, data in enumerate(table.to_pylist()):
        yield Row(data, Where(str(path), row=i))


def _hub(dataset_id: str, split: str | None, config: str | None) -> Iterator[Row]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency of the extras
        raise BenchmarkDataError(
            f"{dataset_id}: not a local file, and loading hub datasets needs `datasets`"
        ) from e
    ds = datasets.load_dataset(dataset_id, config, split=split)
    if isinstance(ds, datasets.DatasetDict):
        raise BenchmarkDataError(
            f"{dataset_id}: choose a split with --split (one of {', '.join(ds.keys())})"
        )
    source = dataset_id if split is None else f"{dataset_id}[{split}]"
    for i, data in enumerate(ds):
        yield Row(dict(data), Where(source, row=i))


_SUFFIXES = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}


def read_rows(
    source: str | Path, *, split: str | None = None, config: str | None = None
) -> Iterator[Row]:
    """Rows of a local .jsonl/.json/.parquet file, or of a hub dataset (``owner/name``) when
    ``source`` is not an existing path. ``split``/``config`` apply to hub datasets only."""
    path = Path(source)
    if path.is_file():
        reader = _SUFFIXES.get(path.suffix.lower())
        if reader is None:
            raise BenchmarkDataError(
                f"{path}: unknown file type {path.suffix!r} (use .jsonl, .json or .parquet)"
            )
        return reader(path)
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id and path.suffix.lower() not in _SUFFIXES:
        return _hub(text, split, config)
    raise FileNotFoundError(f"benchmark data not found: {path}")
