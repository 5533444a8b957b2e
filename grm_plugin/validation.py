"""Input checks: what a caller hands the judge is refused with a clear message before any
engine sees it (``validate_item``, ``check_batch``), and each response of an item is sorted
into judged or not (``triage_responses``: empty, minimal or unencodable text is never shown).

Example:
    >>> validate_item("What is 2+2?", ["4", "5"])
    >>> validate_item("What is 2+2?", "4")
    Traceback (most recent call last):
    ...
    TypeError: responses must be a list of strings, got str
    >>> triage_responses(["4", " ", "5"], minimal_content=False).judged
    [0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .content import is_minimal
from .prompt import check_text, text_problem
from .results import ResponseFlag


def validate_item(prompt: Any, responses: Any, reference: Any = None) -> None:
    """Raise TypeError/ValueError with a clear message for malformed input."""
    _check_prompt(prompt)
    if isinstance(responses, str) or not isinstance(responses, Sequence):
        raise TypeError(f"responses must be a list of strings, got {type(responses).__name__}")
    if len(responses) == 0:
        raise ValueError("responses is empty: give at least one response to judge")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise TypeError(f"response {i} must be a string, got {type(r).__name__}")
    if reference is not None and not isinstance(reference, str):
        raise TypeError(f"reference must be a string or None, got {type(reference).__name__}")
    # text an engine cannot encode is the caller's bad input, not the judge's failure
    for j, m in enumerate([{"content": prompt}] if isinstance(prompt, str) else prompt):
        where = "the prompt" if isinstance(prompt, str) else f"prompt turn {j}"
        check_text(m["content"] + str(m.get("role", "")), where)
    # a response's bad text is that response's problem only (flagged by triage_responses): in
    # a group, the other responses keep their judgment
    if reference is not None:
        check_text(reference, "the reference")


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, Sequence) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
    ):
        if not prompt:
            raise ValueError("prompt is an empty message list")
        return
    raise TypeError(
        f"prompt must be a string or a list of {{'role', 'content'}} messages, "
        f"got {type(prompt).__name__}"
    )


def check_batch(prompts: Any, responses: Any, references: Any) -> list[str | None]:
    """Raise TypeError/ValueError unless ``prompts``, ``responses`` and ``references`` (None:
    none) are lists of one entry per item; the references, one per item. Items themselves are
    checked one by one (a bad item fails alone).

    >>> check_batch(["Q"], [["a"]], None)
    [None]
    """
    for name, value in (("prompts", prompts), ("responses", responses)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list (one entry per item), got {value!r:.40}")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    if references is None:
        return [None] * len(prompts)
    if isinstance(references, str) or not isinstance(references, Sequence):
        # a bare string would otherwise give each item one of its characters
        raise TypeError(
            f"references must be a list (one reference or None per item), got {references!r:.40}"
        )
    if len(references) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    return list(references)


def check_hint(hint_best: int | None, n: int) -> None:
    """Raise ValueError unless ``hint_best`` is None or the index of one of ``n`` responses."""
    if hint_best is not None and not 0 <= hint_best < n:
        raise ValueError(f"hint_best={hint_best} but there are {n} responses")


def check_shown_order(order: Sequence[int], responses: Sequence[str]) -> None:
    """Raise ValueError unless ``order`` shows each of ``responses`` once and none is empty."""
    if sorted(order) != list(range(len(responses))):
        raise ValueError(f"order {list(order)} is not a permutation of {len(responses)}")
    if any(not r.strip() for r in responses):
        raise ValueError("empty responses are never shown to the judge")


@dataclass
class Triage:
    """Which responses of an item the judge sees (``judged``), and why the others are not."""

    judged: list[int] = field(default_factory=list)
    #: per response, its flags so far (``empty_response``, ``invalid_text``, ...)
    flags: list[list[str]] = field(default_factory=list)
    #: response index -> why its text cannot be sent to a judge
    invalid: dict[int, str] = field(default_factory=dict)


def triage_responses(responses: Sequence[str], *, minimal_content: bool) -> Triage:
    """Sort ``responses`` into judged and not: empty ones, ones whose text no engine can carry,
    and (``minimal_content``) ones without a content token are flagged and never shown."""
    triage = Triage(flags=[[] for _ in responses])
    for i, r in enumerate(responses):
        if not r.strip():
            triage.flags[i].append(ResponseFlag.EMPTY_RESPONSE.value)
        elif (bad := text_problem(r, f"response {i}")) is not None:
            triage.flags[i].append(ResponseFlag.INVALID_TEXT.value)
            triage.invalid[i] = bad
        elif minimal_content and is_minimal(r):
            triage.flags[i].append(ResponseFlag.MINIMAL_CONTENT.value)
        else:
            triage.judged.append(i)
    return triage
