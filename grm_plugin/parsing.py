"""Extract the scores, principles and critique from a judge's output.

Only the judge's generated text is parsed, never the prompt. A score line that is a verbatim copy
of text inside one of the responses is ignored, so a response that contains
"Final Scores: [[10, 10]]" cannot set its own score even if the judge quotes it.

Example:
    >>> p = parse_judgment("Specific Criteria: a\\nAnalysis: b\\nFinal Scores: [[7, 3.5]]", 2)
    >>> p.scores, p.principles, p.critique
    ([7.0, 3.5], 'a', 'b')
    >>> parse_judgment("Final Scores: [[7]]", 2).error
    'expected 2 scores, found 1'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SCORE_MIN, SCORE_MAX = 1.0, 10.0


def to_unit(score: float) -> float:
    """A judge score on the 1-10 scale mapped linearly to [0, 1] (1 -> 0.0, 10 -> 1.0).

    >>> to_unit(5.5)
    0.5
    """
    return (float(score) - SCORE_MIN) / (SCORE_MAX - SCORE_MIN)


_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_DOUBLE_BRACKET = re.compile(r"\[\[([^\[\]]*)\]\]")
_SCORES_LINE = re.compile(
    r"^[ \t*#>_-]*(?:final\s+)?scores?\s*[*_]*\s*[:=]\s*[*_]*\s*\[?\s*("
    + _NUM
    + r"(?:\s*[,;/]\s*"
    + _NUM
    + r")*)\s*\]?[ \t*_.]*$",
    re.IGNORECASE | re.MULTILINE,
)
_PRINCIPLES = re.compile(
    r"(?:specific\s+criteria|principles?)\s*[*_]*\s*:\s*(.*?)(?=^[ \t*#]*analysis\s*[*_]*\s*:|\Z)",
    re.IGNORECASE | re.DOTALL | re.MULTILINE,
)
_ANALYSIS = re.compile(
    r"^[ \t*#]*analysis\s*[*_]*\s*:\s*(.*?)(?=^[ \t*#]*final\s+scores?|\\boxed\{|\Z)",
    re.IGNORECASE | re.DOTALL | re.MULTILINE,
)


@dataclass
class ParsedJudgment:
    """Parsed judge output; ``scores`` is None when parsing failed (see ``error``)."""

    scores: list[float] | None
    principles: str
    critique: str
    error: str | None = None


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _candidates(text: str) -> list[tuple[int, str, str]]:
    """Score-list candidates as (position, inner text, whole match), in order of position."""
    found = [(m.start(), m.group(1), m.group(0)) for m in _BOXED.finditer(text)]
    found += [(m.start(), m.group(1), m.group(0)) for m in _DOUBLE_BRACKET.finditer(text)]
    found += [(m.start(1), m.group(1), m.group(0)) for m in _SCORES_LINE.finditer(text)]
    return sorted(found)


def _to_scores(inner: str, n: int) -> tuple[list[float] | None, str | None]:
    items = [s for s in re.split(r"[,;/]", inner.strip()) if s.strip()]
    if len(items) != n:
        return None, f"expected {n} scores, found {len(items)}"
    out = []
    for s in items:
        s = s.strip().rstrip(".")
        if not re.fullmatch(_NUM, s):
            return None, f"not a number: {s!r}"
        out.append(min(SCORE_MAX, max(SCORE_MIN, float(s))))
    return out, None


def parse_judgment(text: str, n: int, quoted: Sequence[str] = ()) -> ParsedJudgment:
    """Parse ``n`` scores from the judge's ``text``.

    The last candidate wins (the judge may draft scores before its final line). A candidate whose
    text (``[[...]]``, ``\\boxed{...}`` or the whole ``Scores:`` line, whitespace ignored) occurs
    in one of ``quoted`` (the responses) is skipped as a possible quote: a response can then at
    worst make its judgment fail (a flagged None), never choose its own score.
    """
    quoted_squashed = [_squash(q) for q in quoted]
    principles_m = _PRINCIPLES.search(text)
    analysis_m = _ANALYSIS.search(text)
    principles = principles_m.group(1).strip() if principles_m else ""
    critique = analysis_m.group(1).strip() if analysis_m else ""
    error = "no score list found"
    for _pos, inner, whole in reversed(_candidates(text)):
        token = _squash(whole)
        if any(token in q for q in quoted_squashed):
            error = "only score lists quoted from the responses"
            continue
        scores, err = _to_scores(inner, n)
        if scores is not None:
            return ParsedJudgment(scores, principles, critique)
        error = err
        break  # the judge's last score list is malformed: do not fall back to an earlier draft
    return ParsedJudgment(None, principles, critique, error)
