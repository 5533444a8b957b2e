"""Resumable JSONL output: each finished item's records, then one line in a progress log.

``spct collect`` and ``spct make-pairs`` write ``out`` item by item with a progress log beside it
(``<out>.progress.jsonl``). An item's records are on disk (fsync) before its progress line is
written, so a logged item is complete; a rerun reads the log back, removes from ``out`` the
records of items it does not list (a run stopped between the two writes) and goes on with the
rest. A last line cut by a kill or a full disk is dropped with a warning naming the file; the
counts of a run are saved beside ``out`` (``<out>.counts.json``).

Example:
    >>> import tempfile, pathlib
    >>> from pydantic import BaseModel, ConfigDict
    >>> class Done(BaseModel):
    ...     id: str
    >>> class Rec(BaseModel):
    ...     id: str
    ...     text: str
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "rft.jsonl"
    >>> with ProgressWriter(out) as w:
    ...     w.write([Rec(id="a", text="x"), Rec(id="a", text="y")], Done(id="a"))
    >>> with out.open("a") as f:  # b's record written, then the run was killed: b not logged
    ...     _ = f.write(Rec(id="b", text="z").model_dump_json() + "\\n")
    >>> done, records = resume(out, Done.model_validate_json, Rec.model_validate_json)
    >>> sorted(done), [r.text for r in records], len(out.read_text().splitlines())
    (['a'], ['x', 'y'], 2)
    >>> progress_path(out).name, counts_path(out).name
    ('rft.progress.jsonl', 'rft.counts.json')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from .items import ReadReport

log = logging.getLogger(__name__)

ParsedT = TypeVar("ParsedT")
RecordT = TypeVar("RecordT")


class ItemLog(BaseModel):
    """One finished item, as logged in the progress file (resume reads these back); a run's
    own log line adds its counts to these."""

    model_config = ConfigDict(extra="forbid")

    id: str
    samples: int = 0  # judgments or solutions drawn for the item


OutcomeT = TypeVar("OutcomeT", bound=ItemLog)


class RunCounts(Protocol):
    """What a resumable run's counts model offers (``CollectCounts``, ``MakePairsCounts``)."""

    bad_input: dict[str, int]
    bad_input_messages: list[str]

    def add(self, o: Any) -> None: ...

    def model_dump_json(self, *, indent: int | None = None) -> str: ...


def progress_path(out: str | Path) -> Path:
    """The progress log beside ``out`` (``rft.jsonl`` -> ``rft.progress.jsonl``)."""
    p = Path(out)
    return p.with_name(p.stem + ".progress.jsonl")


def counts_path(out: str | Path) -> Path:
    """Where the counts are saved beside ``out`` (``rft.jsonl`` -> ``rft.counts.json``)."""
    p = Path(out)
    return p.with_name(p.stem + ".counts.json")


def save_counts(out: str | Path, counts: RunCounts) -> None:
    """Write ``counts`` to ``counts_path(out)``."""
    counts_path(out).write_text(counts.model_dump_json(indent=2) + "\n")


def read_lines(
    path: Path, parse: Callable[[str], ParsedT], *, drop_broken: bool = False
) -> list[tuple[str, ParsedT]]:
    """The non-empty lines of ``path`` with what ``parse`` made of them. A last line that does
    not parse and has no newline is what a kill or a full disk leaves: it is dropped from the
    file (appending after it would glue the next line onto it) with a warning. Any other line
    that does not parse is an error naming file and line, or with ``drop_broken`` dropped with
    a warning."""
    raw = path.read_bytes()
    # split on b"\n" only: str.splitlines would also split inside a JSON string at U+2028
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out: list[tuple[str, ParsedT]] = []
    dropped = False
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append((line.decode(), parse(line.decode())))
            except ValueError as e:
                if not drop_broken:
                    raise ValueError(f"{path}:{number}: broken line ({e}); fix or remove it") from e
                log.warning("%s:%d: dropped a broken line", path, number)
                dropped = True
    if tail.strip():
        try:
            out.append((tail.decode(), parse(tail.decode())))
            tail_ok = True
        except ValueError:
            tail_ok = False
        if not tail_ok:
            log.warning(
                "%s:%d: dropped a cut last line (%d bytes, no newline: the run was stopped "
                "while writing it)",
                path,
                len(lines) + 1,
                len(tail),
            )
    if tail or dropped:
        # repaired in place: complete lines only, each ending in a newline
        path.write_text("".join(text + "\n" for text, _ in out))
    return out


def read_finished_lines(path: Path, parse: Callable[[str], ParsedT]) -> list[ParsedT]:
    """What ``parse`` makes of each line of ``path`` up to its last newline ([] when there is
    no file): a line being written now is not finished yet. Read only, unlike ``read_lines``,
    which repairs a cut line in place; so it is safe on the files of a run that is still
    writing them (a status report, another run reusing finished items)."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    finished = raw[: raw.rfind(b"\n") + 1].decode()
    return [parse(line) for line in finished.split("\n") if line.strip()]


def _id(record: Any) -> object:
    """A record's id: the ``id`` attribute, or key of a plain JSON object (None otherwise)."""
    if isinstance(record, dict):
        return record.get("id")
    return getattr(record, "id", None)


def resume(
    out: Path,
    read_outcome: Callable[[str], OutcomeT],
    read_record: Callable[[str], RecordT],
    record_id: Callable[[RecordT], object] = _id,
    *,
    drop_broken_records: bool = False,
) -> tuple[dict[str, OutcomeT], list[RecordT]]:
    """Finished items from the progress log (by id) and the records of those items in ``out``.

    Records of items the log does not list (a run stopped between writing records and logging
    the item) are removed from ``out`` so the rerun does not duplicate them. A broken log line
    only means that item is done again (dropped with a warning); a broken record line is an
    error naming file and line unless ``drop_broken_records``."""
    log_file = progress_path(out)
    done: dict[str, OutcomeT] = {}
    if log_file.is_file():
        for _, o in read_lines(log_file, read_outcome, drop_broken=True):
            done[o.id] = o
    records: list[RecordT] = []
    if out.is_file():
        lines = read_lines(out, read_record, drop_broken=drop_broken_records)
        kept = [(text, r) for text, r in lines if record_id(r) in done]
        if len(kept) != len(lines):
            out.write_text("".join(text + "\n" for text, _ in kept))
        records = [r for _, r in kept]
    return done, records


def start_counts(
    counts: RunCounts,
    done: Iterable[ItemLog],
    ids: set[str],
    read_report: ReadReport | None,
) -> int:
    """Put the input's bad lines and the finished items among ``ids`` into ``counts``; returns
    how many finished items were counted (the run's ``resumed``)."""
    if read_report is not None:
        counts.bad_input = dict(read_report.counts)
        counts.bad_input_messages = list(read_report.messages)
    resumed = 0
    for o in done:
        if o.id in ids:
            counts.add(o)
            resumed += 1
    return resumed


class ProgressWriter:
    """``out`` and its progress log, open for appending while a run writes items."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> ProgressWriter:
        self._records = self.out.open("a")
        try:
            self._log = progress_path(self.out).open("a")
        except BaseException:
            self._records.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._log.close()
        self._records.close()

    def write(self, records: Iterable[BaseModel], outcome: ItemLog) -> None:
        """One finished item: its records, on disk, then its progress line."""
        wrote = False
        for r in records:
            self._records.write(r.model_dump_json() + "\n")
            wrote = True
        if wrote:
            self._records.flush()
            os.fsync(self._records.fileno())
        # logged after its records are on disk: a logged item is complete
        self._log.write(outcome.model_dump_json() + "\n")
        self._log.flush()


@contextmanager
def counted_run(
    out: Path, counts: RunCounts, *, total: int, desc: str, unit: str, progress: bool
) -> Iterator[Any]:
    """A tqdm bar (hidden without ``progress``) for the run; on the way out, however the run
    ends, the bar is closed and ``counts`` saved beside ``out``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress)
    try:
        yield bar
    finally:
        bar.close()
        save_counts(out, counts)
