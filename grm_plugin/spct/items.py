"""Labeled items for SPCT, read with every bad line counted and reported, never fatal: bad
UTF-8, bad JSON, missing or out-of-range labels, empty or identical responses, repeated ids.

Example:
    >>> it = SPCTItem(id="a", prompt="Rate this", responses=["fine"], rating=7)
    >>> it.is_correct([7.0]), it.is_correct([6.0])
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..benchmark_data.rows import text_lines
from ..items import is_correct


class BadInputReason(str, Enum):
    """Why an input line was skipped (the counts are keyed by these values)."""

    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    INVALID_FIELDS = "invalid_fields"
    NO_BEST = "no_best"
    N_MISMATCH = "n_mismatch"
    EMPTY_RESPONSE = "empty_response"
    IDENTICAL_RESPONSES = "identical_responses"
    DUPLICATE_ID = "duplicate_id"


class SPCTItem(BaseModel):
    """A prompt, its responses and the label: ``best`` (n >= 2) or ``rating`` (n = 1)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    prompt: str | list[dict[str, str]]
    responses: list[str] = Field(min_length=1)
    best: int | None = None
    rating: float | None = Field(None, ge=1, le=10)

    def is_correct(self, scores: list[float] | None) -> bool:
        """The paper's rule: the best response strictly highest (ties are wrong); n = 1: the
        score equals the rating."""
        if scores is None or len(scores) != len(self.responses):
            return False
        if len(self.responses) == 1:
            return self.rating is not None and scores[0] == self.rating
        return self.best is not None and is_correct(scores, self.best)


@dataclass
class ReadReport:
    """What ``read_items`` skipped: counts per reason and the first messages (file:line)."""

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def add(self, reason: BadInputReason, message: str) -> None:
        self.counts[reason.value] += 1
        if len(self.messages) < 50:
            self.messages.append(message)


def _fallback_id(data: dict) -> str:
    blob = json.dumps([data.get("prompt"), data.get("responses")], sort_keys=True)
    return "sha-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check(data: dict) -> tuple[BadInputReason, str] | None:
    responses = data.get("responses")
    if not isinstance(responses, list) or not responses:
        return BadInputReason.INVALID_FIELDS, "'responses' must be a non-empty list of strings"
    if any(isinstance(r, str) and not r.strip() for r in responses):
        return BadInputReason.EMPTY_RESPONSE, "an empty response cannot be ranked"
    seen: dict[str, int] = {}
    for i, r in enumerate(responses):
        key = r.strip() if isinstance(r, str) else None
        if key is not None and key in seen:
            return (
                BadInputReason.IDENTICAL_RESPONSES,
                f"responses {seen[key] + 1} and {i + 1} are identical: no judgment can rank "
                "every response apart, so the item can never be judged correct",
            )
        if key is not None:
            seen[key] = i
    n = len(responses)
    best, rating = data.get("best"), data.get("rating")
    if n == 1:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            return BadInputReason.NO_BEST, "a single response needs a numeric 'rating' (1-10)"
        return None
    if isinstance(best, bool) or not isinstance(best, int):
        return BadInputReason.NO_BEST, f"'best' must be an integer index, got {best!r}"
    if not 0 <= best < n:
        return BadInputReason.N_MISMATCH, f"'best'={best} but the item has {n} responses"
    if "n" in data and data["n"] != n:
        return BadInputReason.N_MISMATCH, f"'n'={data['n']} but the item has {n} responses"
    return None


def read_items(path: str | Path, limit: int | None = None) -> tuple[list[SPCTItem], ReadReport]:
    """Read JSONL items (``{"id"?, "prompt", "responses", "best" | "rating"}``); bad lines
    (bad UTF-8 or JSON, bad labels, empty or identical responses) and repeated ids are skipped
    and reported with file and line. A numeric id is kept as a string (``17`` -> ``"17"``).
    Items without an id get one from a hash of prompt and responses (stable across runs, so a
    resumed run finds them)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"SPCT data not found: {p}")
    items: list[SPCTItem] = []
    report = ReadReport()
    seen: set[str] = set()
    for line in text_lines(p):
        if line.error is not None:
            report.add(BadInputReason.INVALID_ENCODING, line.error)
            continue
        if not line.text.strip():
            continue
        where = f"{p}:{line.number}"
        try:
            data = json.loads(line.text)
        except json.JSONDecodeError as e:
            report.add(BadInputReason.INVALID_JSON, f"{where}: {e}")
            continue
        if not isinstance(data, dict):
            report.add(BadInputReason.INVALID_JSON, f"{where}: not a JSON object")
            continue
        problem = _check(data)
        if problem is not None:
            report.add(problem[0], f"{where}: {problem[1]}")
            continue
        data.setdefault("id", _fallback_id(data))
        if isinstance(data["id"], (int, float)) and not isinstance(data["id"], bool):
            # ids are keys (resume, records): a numeric id is kept as its JSON text
            data["id"] = json.dumps(data["id"])
        try:
            item = SPCTItem.model_validate(data)
        except ValidationError as e:
            fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
            report.add(BadInputReason.INVALID_FIELDS, f"{where}: bad field(s) {fields}")
            continue
        if item.id in seen:
            report.add(BadInputReason.DUPLICATE_ID, f"{where}: id {item.id!r} seen before")
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items, report
