"""Extract the scores, principles and critique from a judge's output.

Only the judge's generated text is parsed, never the prompt. What counts is *where* text stands
in that output, not what it says:

- The scores are the judge's final score line: a ``Final Scores: [[...]]`` line (or a line
  ending in ``\\boxed{...}``), at a line start, outside quoted text (``>`` blockquotes, code
  fences, and copied fences: only a begin marker carrying the item's own fence code opens one,
  since a response can forge any other code). When the output has such a line, looser ones (``Final
  Scores: 7, 3``) do not count; the last line of the strongest kind present is the verdict.
- Nothing score-like may follow the verdict: a judge that quotes a response's ``Scores: 10``
  after its own line, or that was cut off mid-quote, gives no scores (a flagged failure, which
  is retried), never the quoted number. Score text inside inline quotes (``"..."``, curly
  quotes, backticks) is exempt: that is how judges mention a response's text, and an inline
  quote is never a verdict, so a judge's note on a response's fake score voids nothing.
- Every score must lie on the scale (1-10): a judge writing ``[[80, 90]]`` gave no valid
  scores (a flagged failure, retried), rather than a tie at 10.
- The principles and the critique come from the judge's own section headers (``Specific
  Criteria:``, ``Analysis:``) at line starts, in that order, outside quoted text; a header that
  first appears inside the analysis (e.g. copied from a response) is not the judge's.
- A verdict line that, together with the text just before it, was copied from a response (a
  judge echoing a response verbatim) is ignored. This check needs a long stretch of the judge's
  own preceding text to match, so a response cannot void an honest verdict by containing every
  short score list.

Parsing takes time linear in the text, whatever the text (a judge may echo a response built to
stall a regex): no pattern here has two unbounded repeats that can match the same characters.

Example:
    >>> p = parse_judgment("Specific Criteria: a\\nAnalysis: b\\nFinal Scores: [[7, 3.5]]", 2)
    >>> p.scores, p.principles, p.critique
    ([7.0, 3.5], 'a', 'b')
    >>> parse_judgment("Final Scores: [[7]]", 2).error
    'expected 2 scores, found 1'
    >>> parse_judgment("Final Scores: [[2]]\\n> Scores: 10", 1).scores is None
    True
    >>> parse_judgment('Final Scores: [[2]]\\nIt wrote "Scores: 10".', 1).scores
    [2.0]
    >>> parse_judgment("Final Scores: [[80, 90]]", 2).error
    'score 80 outside the scale 1-10'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

SCORE_MIN, SCORE_MAX = 1.0, 10.0

#: a verdict is a quote when this many characters (whitespace ignored) of the judge's text just
#: before it also precede it in a response ...
QUOTE_CONTEXT = 32
#: ... or when the response's whole text before it (at least this long) does
QUOTE_CONTEXT_AT_START = 16


def to_unit(score: float) -> float:
    """A judge score on the 1-10 scale mapped linearly to [0, 1] (1 -> 0.0, 10 -> 1.0).

    >>> to_unit(5.5)
    0.5
    """
    return (float(score) - SCORE_MIN) / (SCORE_MAX - SCORE_MIN)


_NUM = r"[-+]?\d+(?:\.\d+)?"
_NUMS = _NUM + r"(?:\s*[,;/]\s*" + _NUM + r")*"
# one character class for the decoration around the colon: "\s*[*_]*\s*" matched n spaces in
# n^2 ways, which a failing match tried one by one
_LABEL = r"final\s+scores?[\s*_]*[:=][\s*_]*"
# decoration a judge may put around its own line (bold, heading, a trailing period); not "-"
# or ">": a list item or a blockquote is how a judge quotes. Stripped with str.strip: a
# "[...]*$" regex retried from every character of a run that does not end the line.
_LEAD_CHARS = " \t*#_"
_TRAIL_CHARS = " \t*_."
_STRICT = re.compile(r"^" + _LABEL + r"\[\[([^\[\]]*)\]\]$", re.IGNORECASE)
_LABEL_ONLY = re.compile(r"^final\s+scores?[\s*_]*[:=]$", re.IGNORECASE)
_BARE_LIST = re.compile(r"^\[\[([^\[\]]*)\]\]$")
_BOXED_END = re.compile(r"\\boxed\{([^{}]*)\}$")
_LOOSE = re.compile(r"^" + _LABEL + r"(?:\[\s*(" + _NUMS + r")\s*\]|(" + _NUMS + r"))$", re.I)
# anything a reader could take for scores, quoted or not
_SCORE_LIKE = re.compile(r"\[\[|\\boxed\{|\bscores?\b[\s*_]*[:=][\s*_]*[\[\d+-]", re.I)
_FENCE = re.compile(r"^\s*(```|~~~)")
# inline quotes a judge mentions a response's words in: opener -> closer
_INLINE_QUOTES = {'"': '"', "\u201c": "\u201d", "`": "`"}
_INLINE_OPEN = re.compile("|".join(map(re.escape, _INLINE_QUOTES)))
_PRINCIPLES_HEAD = re.compile(
    r"^[ \t*#_]*(?:specific\s+criteria|principles?)[ \t*_]*:[ \t*_]*", re.IGNORECASE
)
_ANALYSIS_HEAD = re.compile(r"^[ \t*#_]*analysis[ \t*_]*:[ \t*_]*", re.IGNORECASE)
# what every verdict pattern below needs (``[[``, ``\boxed{`` or a leading "final"): one
# search rules out a line that none of the four could match (most lines of a judgment)
_MAYBE_VERDICT = re.compile(r"\[\[|\\boxed\{|^final", re.IGNORECASE)
# a line that starts a score line, whether or not it parses (see before_score_line)
_SCORE_LINE_START = re.compile(r"\[\[|\\boxed\{|^final\s+scores?\b", re.IGNORECASE)
# zero-width characters too: the prompt breaks control tokens in responses with them
_SQUASHED = re.compile(r"[\s\u200b-\u200d\u2060\ufeff]+")
_SCORE_SEP = re.compile(r"[,;/]")
_NUM_ONLY = re.compile(_NUM)
_DIGIT = re.compile(r"\d")


class ScoreFormat(str, Enum):
    """How a judge writes its final score line. A template declares the one it asks for
    (``{# score_format: boxed #}``; default ``final_scores``) and the score-line prefill opens
    that line; the parser reads every format here (a judge may answer in either).

    >>> print(ScoreFormat("boxed").line_start)
    \\boxed{
    >>> [parse_judgment(f.line_start + "7, 3" + f.line_end, 2).scores for f in ScoreFormat]
    [[7.0, 3.0], [7.0, 3.0]]
    """

    FINAL_SCORES = "final_scores"  # Final Scores: [[7, 3]]
    BOXED = "boxed"  # ... \boxed{7, 3}

    @property
    def line_start(self) -> str:
        """What the score line starts with, up to the first score (the prefill's text)."""
        return "Final Scores: [[" if self is ScoreFormat.FINAL_SCORES else "\\boxed{"

    @property
    def line_end(self) -> str:
        """What closes the score line after the last score."""
        return "]]" if self is ScoreFormat.FINAL_SCORES else "}"


class _Kind(IntEnum):
    """How clearly a line is a verdict: the strongest kind present in an output wins."""

    LOOSE = 1  # Final Scores: 7, 3 / Final Scores: [7, 3]
    STRONG = 2  # Final Scores: [[7, 3]] / ... \boxed{7, 3}


@dataclass
class ParsedJudgment:
    """Parsed judge output; ``scores`` is None when parsing failed (see ``error``)."""

    scores: list[float] | None
    principles: str
    critique: str
    error: str | None = None
    #: where each score starts in the text (character index of its first character, shown
    #: order); what expected scores read the judge's distribution at
    score_starts: list[int] | None = None


@dataclass
class _Verdict:
    line: int
    inner: str
    kind: _Kind


def _squash(text: str) -> str:
    return _SQUASHED.sub("", text)


def _markers(fence_code: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Begin/end patterns of the prompt's fences carrying ``fence_code``."""
    code = re.escape(fence_code)
    label = r"<<<\s*(?:RESPONSE\s+\d+|CONVERSATION|REFERENCE)\s+"
    return (
        re.compile(label + r"BEGIN\s+" + code + r"\s*>>>"),
        re.compile(label + r"END\s+" + code + r"\s*>>>"),
    )


def _quoted_lines(lines: list[str], fence_code: str | None = None) -> list[bool]:
    """Lines that are quoted material, not the judge's own text: blockquotes, code fences and
    fences copied from the prompt. Only markers with the item's own code count: a response
    that starts with a forged marker must not hide the verdict of a judge that quotes it, and
    with no code known no marker can be told from a forgery."""
    markers = None
    out = []
    in_code = in_marker = False
    for line in lines:
        if _FENCE.match(line):
            out.append(True)
            in_code = not in_code
            continue
        # a plain substring test first: the code is in almost no line, so the patterns (one
        # pair per item: compiling them cost more than the rest of the parse) rarely are built
        marker = fence_code in line if fence_code else False
        if marker and markers is None:
            markers = _markers(fence_code)  # type: ignore[arg-type]
        if marker and markers[0].search(line):  # type: ignore[index]
            in_marker = True
        out.append(in_code or in_marker or line.lstrip().startswith(">"))
        if marker and markers[1].search(line):  # type: ignore[index]
            in_marker = False
    return out


def _strip_decoration(line: str) -> str:
    return line.lstrip(_LEAD_CHARS).rstrip(_TRAIL_CHARS)


def before_score_line(text: str, fence_code: str | None = None) -> str:
    """The judge's ``text`` before its last own line that starts a score line (a label
    ``Final Scores``, a ``[[`` list or a ``\\boxed{``), valid or not; all of it when it has
    none. Where a constrained score line takes over (``grm_plugin.engines.score_grammar``).

    >>> before_score_line("Analysis: A is right.\\n**Final Scores:** [[80, 90]]")
    'Analysis: A is right.\\n'
    >>> before_score_line("Analysis: no line.")
    'Analysis: no line.'
    """
    lines = text.splitlines()
    mask = _quoted_lines(lines, fence_code)
    for i in range(len(lines) - 1, -1, -1):
        if not mask[i] and _SCORE_LINE_START.search(_strip_decoration(lines[i])):
            return "".join(text.splitlines(keepends=True)[:i])
    return text


def _verdict_of(lines: list[str], i: int) -> _Verdict | None:
    """Line ``i`` read as a verdict line of the judge's own, if it is one."""
    body = _strip_decoration(lines[i])
    if _MAYBE_VERDICT.search(body) is None:
        return None
    for pattern in _STRONG_LINES.values():
        m = pattern.search(body)
        if m:
            return _Verdict(i, m.group(1), _Kind.STRONG)
    m = _BARE_LIST.match(body)
    if m:  # "Final Scores:" on its own line, the list on the next
        prev = next((j for j in range(i - 1, -1, -1) if lines[j].strip()), None)
        label = _strip_decoration(lines[prev]) if prev is not None else ""
        if _LABEL_ONLY.match(label):
            return _Verdict(i, m.group(1), _Kind.STRONG)
        return None
    m = _LOOSE.match(body)
    if m:
        return _Verdict(i, m.group(1) or m.group(2), _Kind.LOOSE)
    return None


#: each format's own score line (``_STRICT`` is anchored at the line start, ``\\boxed{}`` ends
#: a line of any text); one entry per ``ScoreFormat``, so a new format cannot go unparsed
_STRONG_LINES: dict[ScoreFormat, re.Pattern[str]] = {
    ScoreFormat.FINAL_SCORES: _STRICT,
    ScoreFormat.BOXED: _BOXED_END,
}
assert set(_STRONG_LINES) == set(ScoreFormat)


def _outside_inline_quotes(line: str) -> str:
    """``line`` without its closed inline quotes (``"..."``, curly quotes, backticks), in one
    pass: an opener without a closer later on the line is text, and so is every later opener
    of its kind (so a line of a million unclosed openers costs one search each, not one scan)."""
    parts = []
    pos = 0  # start of the text not yet copied
    at = 0  # where to look for the next opener
    unclosed: set[str] = set()
    while (m := _INLINE_OPEN.search(line, at)) is not None:
        opener = m.group()
        at = m.end()
        if opener in unclosed:
            continue
        end = line.find(_INLINE_QUOTES[opener], at)
        if end < 0:
            unclosed.add(opener)
            continue
        parts.append(line[pos : m.start()])
        pos = at = end + 1
    parts.append(line[pos:])
    return " ".join(parts)


def _copied(before: str, line: str, quoted: Sequence[str]) -> bool:
    """True when ``line`` and the judge's text just ``before`` it were copied from a response."""
    token = _squash(line)
    if not token:
        return False
    ctx = None  # the judge's text before the line, squashed: only once a response has the line
    for q in dict.fromkeys(quoted):  # the originals and the shown texts are mostly the same
        if token[0] not in q or token[-1] not in q:
            continue  # squashing keeps every other character: the line cannot be in it
        sq = _squash(q)
        start = sq.find(token)
        if start == -1:
            continue
        if ctx is None:
            ctx = _squash(before)
        if not ctx:
            return False  # an output that is only a score line quotes nothing we can tell
        while start != -1:
            prefix = sq[:start]
            common = 0
            limit = min(len(prefix), len(ctx), QUOTE_CONTEXT)
            while common < limit and prefix[-1 - common] == ctx[-1 - common]:
                common += 1
            if common >= QUOTE_CONTEXT or common == len(prefix) >= QUOTE_CONTEXT_AT_START:
                return True
            start = sq.find(token, start + 1)
    return False


def _section(lines: list[str], quoted_mask: list[bool], head: re.Pattern, lo: int, hi: int):
    """Index of the first own-text line in [lo, hi) starting with ``head``, or None."""
    for i in range(lo, hi):
        if not quoted_mask[i] and head.match(lines[i]):
            return i
    return None


def _sections(lines: list[str], quoted_mask: list[bool], end: int) -> tuple[str, str]:
    """(principles, critique) from the judge's own headers before line ``end``."""
    analysis = _section(lines, quoted_mask, _ANALYSIS_HEAD, 0, end)
    crit_end = end
    principles = ""
    p = _section(lines, quoted_mask, _PRINCIPLES_HEAD, 0, end if analysis is None else analysis)
    if p is not None:
        stop = analysis if analysis is not None else end
        first = _PRINCIPLES_HEAD.sub("", lines[p], count=1)
        principles = "\n".join([first, *lines[p + 1 : stop]]).strip()
    critique = ""
    if analysis is not None:
        first = _ANALYSIS_HEAD.sub("", lines[analysis], count=1)
        critique = "\n".join([first, *lines[analysis + 1 : crit_end]]).strip()
    return principles, critique


def _to_scores(inner: str, n: int) -> tuple[list[float] | None, str | None]:
    items = [s for s in _SCORE_SEP.split(inner.strip()) if s.strip()]
    if len(items) != n:
        return None, f"expected {n} scores, found {len(items)}"
    out = []
    for s in items:
        s = s.strip().rstrip(".")
        if not _NUM_ONLY.fullmatch(s):
            return None, f"not a number: {s!r}"
        value = float(s)
        if not SCORE_MIN <= value <= SCORE_MAX:
            # not clamped: [[80, 90]] is the judge's preference, and clamping made it a tie
            return None, f"score {s} outside the scale {SCORE_MIN:g}-{SCORE_MAX:g}"
        out.append(value)
    return out, None


def parse_judgment(
    text: str, n: int, quoted: Sequence[str] = (), *, fence_code: str | None = None
) -> ParsedJudgment:
    """Parse ``n`` scores from the judge's ``text`` (see the module doc for the rules).

    ``quoted``: the responses as given and as shown; a verdict line the judge copied from one of
    them together with the text before it (a verbatim echo) is not a verdict.
    ``fence_code``: the code of the prompt's fence markers; a copied fence with this code is
    quoted text. Without it no marker-like line opens a quote.
    """
    lines = text.splitlines()
    mask = _quoted_lines(lines, fence_code)
    verdict = _last_verdict(lines, mask)
    principles, critique = _sections(lines, mask, verdict.line if verdict else len(lines))
    if verdict is None:
        error = (
            "no final score line of the judge's own (only quoted or inline score text)"
            if any(_SCORE_LIKE.search(line) for line in lines)
            else "no score list found"
        )
        return ParsedJudgment(None, principles, critique, error)
    after = lines[verdict.line + 1 :]
    if any(_SCORE_LIKE.search(a) and _SCORE_LIKE.search(_outside_inline_quotes(a)) for a in after):
        return ParsedJudgment(
            None,
            principles,
            critique,
            "score text follows the final score line (a quote after the verdict, or cut off)",
        )
    if quoted and _copied("\n".join(lines[: verdict.line]), lines[verdict.line], quoted):
        return ParsedJudgment(
            None, principles, critique, "the final score line was copied from a response"
        )
    scores, err = _to_scores(verdict.inner, n)
    starts = _score_starts(text, lines, verdict) if scores is not None else None
    return ParsedJudgment(scores, principles, critique, err, starts)


def _last_verdict(lines: list[str], mask: list[bool]) -> _Verdict | None:
    """The verdict: the last own line of the strongest kind present. Read from the end, so
    that the usual judgment (its verdict on its last line) reads one line, not all."""
    loose = None
    for i in range(len(lines) - 1, -1, -1):
        if mask[i]:
            continue
        v = _verdict_of(lines, i)
        if v is not None and v.kind is _Kind.STRONG:
            return v
        if v is not None and loose is None:
            loose = v
    return loose


def _score_starts(text: str, lines: list[str], verdict: _Verdict) -> list[int] | None:
    """Character index in ``text`` of each number of the verdict line."""
    offset = 0
    for line in text.splitlines(keepends=True)[: verdict.line]:
        offset += len(line)
    line = lines[verdict.line]
    at = line.rfind(verdict.inner)  # the verdict's list ends its line: the last occurrence
    if at < 0:
        return None
    base = offset + at
    return [
        base + m.start()
        for m in _DIGIT.finditer(verdict.inner)
        if _is_number_start(verdict.inner, m.start())
    ]


def _is_number_start(inner: str, i: int) -> bool:
    # the first digit of a number: not after another digit or a decimal point
    return i == 0 or not (inner[i - 1].isdigit() or inner[i - 1] == ".")
