"""Test doubles for wiring tests: engines that judge by a fixed rule, instantly.

They read the responses back out of the real judge prompt, so a test that uses them still runs
the real prompt builder, parser, shuffling and voting.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> rm = GenerativeRewardFn(RuleJudgeEngine(), samples=2)
    >>> rm.score("Say hi", ["hi", "hello there"]).scores
    [3.0, 10.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..engines.base import EngineError, GenerationRequest, JudgeEngine

_FENCE = re.compile(r"<<<RESPONSE (\d+) BEGIN (\w+)>>>\n(.*?)\n<<<RESPONSE \1 END \2>>>", re.S)


def length_score(response: str) -> float:
    """1 + one point per character, capped at 10: deterministic and easy to predict."""
    return float(min(10, 1 + len(response.strip())))


def shown_responses(request: GenerationRequest) -> list[str]:
    """The responses in the order the judge prompt shows them."""
    return responses_in_prompt(request.messages[-1]["content"])


def responses_in_prompt(text: str) -> list[str]:
    """The fenced responses of a judge prompt's text, in the order shown."""
    return [m.group(3) for m in _FENCE.finditer(text)]


def rule_judgment(responses: list[str], score_fn: Callable[[str], float] = length_score) -> str:
    """A well-formed judgment that scores each shown response by ``score_fn``.

    Example:
        >>> rule_judgment(["hi", "hello there"]).splitlines()[-1]
        'Final Scores: [[3, 10]]'
    """
    scores = ", ".join(f"{score_fn(r):g}" for r in responses)
    return (
        "Specific Criteria: Accuracy (60%), Brevity (40%).\n"
        "Analysis: "
        + " ".join(f"Response {i + 1} is fine." for i in range(len(responses)))
        + f"\nFinal Scores: [[{scores}]]"
    )


class RuleJudgeEngine(JudgeEngine):
    """Answers every request with a well-formed judgment scoring each response by ``score_fn``."""

    def __init__(self, score_fn: Callable[[str], float] = length_score) -> None:
        self.score_fn = score_fn
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        return [rule_judgment(shown_responses(request), self.score_fn)] * request.n


class FailingEngine(JudgeEngine):
    """Every request fails, as a server that is down would after its retries."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        raise EngineError("judge server unreachable (FailingEngine)")


class TextEngine(JudgeEngine):
    """Answers every request with the given texts in turn (for parser and retry tests)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> list[str]:
        out = []
        for _ in range(request.n):
            out.append(self.texts[min(self.calls, len(self.texts) - 1)])
            self.calls += 1
        return out
