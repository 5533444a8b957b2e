"""Answer checkers for ``spct make-pairs``: is a sampled solution's final answer the reference?

A checker reads the reference answer once (``reference``: None when it cannot be read, so the
problem is counted as bad) and then labels each sampled solution ``right``, ``wrong`` or
``no_answer`` (no final answer found: such a sample is never used as the wrong side of a pair,
since a cut or rambling text is not the kind of wrong solution a judge must learn to spot).
Checkers live in a registry keyed by name; ``numeric`` is built in (``numeric-strict``: only an
announced answer counts, so a solution cut at the token limit has none), and ``get_checker`` also
imports ``"package.module:attribute"`` for a checker of your own.

Example:
    >>> numeric = get_checker("numeric")
    >>> ref = numeric.reference("1200.5")
    >>> numeric.check("So she pays $1,200.50 in total.\\nThe answer is $1,200.50.", ref)
    <Verdict.RIGHT: 'right'>
    >>> numeric.check("#### 42", numeric.reference("41")), numeric.check("no idea", ref)
    (<Verdict.WRONG: 'wrong'>, <Verdict.NO_ANSWER: 'no_answer'>)
"""

from __future__ import annotations

import importlib
import math
import re
from enum import Enum
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable


class Verdict(str, Enum):
    """What a checker says about one sampled solution."""

    RIGHT = "right"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"


@runtime_checkable
class AnswerChecker(Protocol):
    """The interface: parse the reference once, then judge each solution against it."""

    def reference(self, answer: str) -> Any | None:
        """The parsed reference answer, or None when it cannot be read (a bad problem)."""

    def check(self, solution: str, reference: Any) -> Verdict:
        """Whether ``solution``'s final answer matches the parsed ``reference``."""


# a number: optional sign, optional currency, digits with thousands commas or plain, decimals,
# or a simple fraction; thousands groups must be exactly 3 digits so "1, 2, 3" is three numbers
# (a minus sign right after a digit or bracket is subtraction, "10-5", not a negative number)
_NUMBER = (
    r"(?:(?<![\w)\]])[-\u2212])?\$?\s*(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
    r"(?:\s*/\s*\d+)?"
)
_NUMBER_RE = re.compile(_NUMBER)
# where a final answer is announced; the last announcement wins
_MARKERS = [
    re.compile(r"\\boxed\s*\{([^{}]*)\}"),
    re.compile(r"####\s*([^\n]*)"),
    re.compile(r"(?:^|\n)\s*(?:A|Answer|Final answer)\s*:\s*([^\n]*)", re.I),
    re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*([^\n]*)", re.I),
]


def parse_number(text: str) -> float | None:
    """The value of one number as written (``"$1,200.50"``, ``"-3"``, ``"3/4"``, ``"42."``).

    Example:
        >>> parse_number("$1,200.50"), parse_number("3/4"), parse_number("abc")
        (1200.5, 0.75, None)
    """
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    raw = re.sub(r"[\s$,]", "", m.group(0)).replace("\u2212", "-")
    try:
        value = float(Fraction(raw)) if "/" in raw else float(raw)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def final_number(text: str) -> float | None:
    """The final answer of a solution: the first number after the last answer marker
    (``\\boxed{}``, ``####``, ``A:``, ``Answer:``, ``the answer is``), else the last number.

    Example:
        >>> final_number("3 + 4 = 7 apples.\\nA: 7."), final_number("It is 12, then 15.")
        (7.0, 15.0)
    """
    announced = announced_number(text)
    if announced is not None:
        return announced
    numbers = _NUMBER_RE.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def announced_number(text: str) -> float | None:
    """The number after the last answer marker, or None when no marker announces one (a
    solution cut at the token limit, or one that never states its answer).

    Example:
        >>> announced_number("x = 3 * 4 = 12\\nA: 12"), announced_number("x = 3 * 4 = 12")
        (12.0, None)
    """
    best: tuple[int, str] | None = None
    for marker in _MARKERS:
        for m in marker.finditer(text):
            if _NUMBER_RE.search(m.group(1)) and (best is None or m.start() > best[0]):
                best = (m.start(), m.group(1))
    return None if best is None else parse_number(best[1])


class NumericChecker:
    """Final number vs reference number, equal within ``rel_tol`` (relative) or ``abs_tol``.

    ``require_marker``: only an announced answer (``A:``, ``####``, ``\\boxed{}``, ``the answer
    is``) counts; a solution without one has no answer (it is never paired as the wrong one).
    """

    def __init__(
        self, rel_tol: float = 1e-6, abs_tol: float = 1e-9, require_marker: bool = False
    ) -> None:
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.require_marker = require_marker

    def reference(self, answer: str) -> float | None:
        return final_number(answer) if isinstance(answer, str) else None

    def check(self, solution: str, reference: float) -> Verdict:
        value = announced_number(solution) if self.require_marker else final_number(solution)
        if value is None:
            return Verdict.NO_ANSWER
        close = math.isclose(value, reference, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return Verdict.RIGHT if close else Verdict.WRONG


CHECKERS: dict[str, AnswerChecker] = {
    "numeric": NumericChecker(),
    # for policies that get cut at the token limit: a cut solution is not a wrong solution
    "numeric-strict": NumericChecker(require_marker=True),
}


def register_checker(name: str, checker: AnswerChecker) -> None:
    """Make ``checker`` available by ``name`` (``make_pairs.checker`` in the config).

    Example:
        >>> class Exact:
        ...     def reference(self, answer): return answer.strip() or None
        ...     def check(self, solution, reference):
        ...         return Verdict.RIGHT if solution.strip() == reference else Verdict.WRONG
        >>> register_checker("exact", Exact()); get_checker("exact").check("yes", "yes")
        <Verdict.RIGHT: 'right'>
    """
    if not isinstance(checker, AnswerChecker):
        raise TypeError(f"{name}: a checker needs reference() and check() methods")
    CHECKERS[name] = checker


def get_checker(name: str) -> AnswerChecker:
    """A registered checker by name, or one imported from ``"package.module:attribute"`` (an
    instance, or a class that is instantiated without arguments)."""
    if name in CHECKERS:
        return CHECKERS[name]
    if ":" not in name:
        known = ", ".join(sorted(CHECKERS))
        raise ValueError(f"unknown checker {name!r} (registered: {known}; or 'module:attribute')")
    module, _, attr = name.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    checker = obj() if isinstance(obj, type) else obj
    if not isinstance(checker, AnswerChecker):
        raise TypeError(f"{name}: a checker needs reference() and check() methods")
    return checker
