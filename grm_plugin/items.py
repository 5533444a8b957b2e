"""Labeled judging items, the data every part reads: benchmarks, evaluation, SPCT and the meta
RM. Kept apart from all of them so none has to import another to share the item type.

Example:
    >>> item = PreferenceItem(id="a", prompt="Say hi", responses=["hi", "bye"], best=0)
    >>> is_correct([8.0, 3.0], item.best), is_correct([5.0, 5.0], item.best)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreferenceItem(BaseModel):
    """One labeled item: a prompt, its responses and the index of the best one.

    ``subset`` groups items in reports (a benchmark's subset or section); ``source`` is kept
    from our JSONL format, where it also serves as the subset when ``subset`` is absent.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str | list[dict[str, str]]
    responses: list[str] = Field(min_length=1)
    best: int = Field(ge=0)
    subset: str | None = None
    source: str | None = None
    reference: str | None = None

    @model_validator(mode="after")
    def _best_in_range(self) -> PreferenceItem:
        if self.best >= len(self.responses):
            raise ValueError(f"best={self.best} but only {len(self.responses)} responses")
        return self


def load_preference_items(path: str | Path, limit: int | None = None) -> list[PreferenceItem]:
    """Read our JSONL format, ``{"prompt", "responses", "best"}`` per line (optional ``id``,
    ``source``, ``subset``, ``reference``); an item without ``id`` gets ``<file stem>-<line>``.
    Bad lines raise ``BenchmarkDataError`` (a ValueError) naming the file, line and field."""
    from .benchmark_data import Format, load_benchmark

    return load_benchmark(path, format=Format.GRM_PLUGIN, limit=limit).items


def is_correct(scores: Sequence[float] | None, best: int) -> bool:
    """True when ``scores[best]`` is strictly above every other score (a tie is wrong)."""
    if scores is None:
        return False
    return all(scores[best] > s for i, s in enumerate(scores) if i != best)
