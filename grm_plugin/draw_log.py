"""A judge's draw over many items that survives a stop: judged chunk by chunk, each chunk
appended to ``<name>.partial.jsonl`` and the run's state to ``<name>.progress.json``, so that
running the same command again judges only the items left.

A resumed draw is the draw the stopped run would have made: the done items form a prefix of
the input, and the judge's item counter (``GenerativeRewardFn.items_started``: a seeded judge
draws each item's response orders, fence code and sampling seeds from it) is set back to where
the stopped run stood. The state names the judge (a fingerprint of its configuration); a
different judge, or items that are not the same prefix, is an error, never a silent mix.

Example:
    >>> import tempfile, pathlib
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.items import PreferenceItem
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> items = [PreferenceItem(id=f"q{i}", prompt="Q", responses=["a", "bb"], best=1)
    ...          for i in range(5)]
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), seed=0)
    >>> first = resumable_draw(rm, items[:3], folder, judge="J", chunk_size=2, progress=False)
    >>> again = GenerativeRewardFn(RuleJudgeEngine(), seed=0)  # a new process, say
    >>> draws = resumable_draw(again, items, folder, judge="J", chunk_size=2, progress=False)
    >>> [d.item.id for d in draws], again.items_started
    (['q0', 'q1', 'q2', 'q3', 'q4'], 5)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .evaluation import ItemDraw, draw
from .items import PreferenceItem
from .reward import GenerativeRewardFn

log = logging.getLogger(__name__)


class DrawState(BaseModel):
    """Where a resumable draw stands (``<name>.progress.json``)."""

    model_config = ConfigDict(extra="forbid")

    judge: str
    items_done: int
    items_started: int


def partial_path(folder: Path, name: str) -> Path:
    """The draw's items so far, one ``ItemDraw`` a line."""
    return folder / f"{name}.partial.jsonl"


def state_path(folder: Path, name: str) -> Path:
    """The draw's state: judge, items done, the judge's item counter."""
    return folder / f"{name}.progress.json"


def resumable_draw(
    rm: GenerativeRewardFn,
    items: Sequence[PreferenceItem],
    folder: str | Path,
    *,
    judge: str,
    name: str = "samples",
    chunk_size: int = 8,
    progress: bool = True,
) -> list[ItemDraw]:
    """Judge every item once with ``rm`` (all samples kept), ``chunk_size`` items at a time,
    resuming from ``folder`` what a stopped run with the same ``judge`` (a fingerprint of the
    judge's configuration) wrote there. ``clear`` removes the files once the caller has what it
    needs from the draw."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    draws = _resume(rm, items, folder, name, judge)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(draws), desc="judging", unit="item")
    try:
        with partial_path(folder, name).open("a", encoding="utf-8") as out:
            for start in range(len(draws), len(items), chunk_size):
                chunk = list(items[start : start + chunk_size])
                new = draw(rm, chunk, progress=False)
                # the chunk's lines are on disk before the state that counts them
                out.write("".join(d.model_dump_json() + "\n" for d in new))
                out.flush()
                os.fsync(out.fileno())
                draws += new
                _save_state(folder, name, DrawState(judge=judge, items_done=len(draws),
                                                    items_started=rm.items_started))  # fmt: skip
                if bar is not None:
                    bar.update(len(new))
    finally:
        if bar is not None:
            bar.close()
    return draws


def clear(folder: str | Path, name: str = "samples") -> None:
    """Remove a finished draw's partial files (its result is saved elsewhere by then)."""
    for p in (partial_path(Path(folder), name), state_path(Path(folder), name)):
        p.unlink(missing_ok=True)


def _resume(
    rm: GenerativeRewardFn, items: Sequence[PreferenceItem], folder: Path, name: str, judge: str
) -> list[ItemDraw]:
    state_file, partial = state_path(folder, name), partial_path(folder, name)
    if not state_file.is_file():
        partial.unlink(missing_ok=True)  # lines no state counts: a run stopped in its first chunk
        return []
    state = DrawState.model_validate_json(state_file.read_text(encoding="utf-8"))
    if state.judge != judge:
        raise ValueError(
            f"{state_file}: a draw by another judge configuration stopped here; use another "
            f"output folder, or delete {state_file.name} and {partial.name} to start over"
        )
    lines = partial.read_text(encoding="utf-8").splitlines() if partial.is_file() else []
    if len(lines) < state.items_done:
        raise ValueError(
            f"{partial}: {len(lines)} items on disk, its state counts {state.items_done}; "
            f"delete {state_file.name} and {partial.name} to start over"
        )
    draws = [ItemDraw.model_validate_json(line) for line in lines[: state.items_done]]
    wanted = [it.id for it in items[: state.items_done]]
    if [d.item.id for d in draws] != wanted:
        raise ValueError(
            f"{partial}: the items drawn so far are not the first {state.items_done} of this "
            "input (another file, --limit or order); use another output folder"
        )
    if len(lines) > state.items_done:  # a chunk written, its state not: judged again
        partial.write_text("".join(line + "\n" for line in lines[: state.items_done]))
    rm.items_started = state.items_started
    if draws:
        log.warning("resuming %s: %d of %d items already judged", partial, len(draws), len(items))
    return draws


def _save_state(folder: Path, name: str, state: DrawState) -> None:
    path = state_path(folder, name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a stop leaves the old state or the new one
