"""The engine interface: a conversation in, n texts out.

Bring your own engine by subclassing ``JudgeEngine`` and implementing ``generate``.

Example:
    >>> import asyncio
    >>> class Echo(JudgeEngine):
    ...     async def generate(self, request):
    ...         return ["Final Scores: [[5]]"] * request.n
    >>> asyncio.run(Echo().generate(GenerationRequest([{"role": "user", "content": "hi"}], n=2)))
    ['Final Scores: [[5]]', 'Final Scores: [[5]]']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..deadline import NEVER, Expiry, cap
from ..score_distribution import ScoreDistribution
from .errors import EngineError
from .score_grammar import ScoreList

__all__ = ["EngineError", "EngineHealth", "GenerationRequest", "JudgeEngine"]


@dataclass
class GenerationRequest:
    """Generate ``n`` completions of ``messages``; temperature 0 means greedy.

    ``assistant_prefix``: the start of the assistant's answer, to be continued (the texts
    returned are what follows it). Only engines with ``supports_assistant_prefix`` take it.
    ``score_list``: the text to generate is the rest of a score line (the prefix opened it),
    decoded under that grammar; only engines with ``constrains_scores`` take it.
    """

    messages: list[dict[str, str]]
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 768
    seed: int | None = None
    assistant_prefix: str | None = None
    score_list: ScoreList | None = None
    #: seconds for one request to a judge server, per try (``Deadline.request``; None: no limit)
    request_timeout: float | None = None
    #: when the item (or its batch) is abandoned; set once per item, so retries share one clock
    expiry: Expiry = NEVER

    def attempt_timeout(self) -> float | None:
        """Seconds one try may take now: ``request_timeout`` capped by what the expiry leaves."""
        return cap(self.request_timeout, self.expiry)


@dataclass
class EngineHealth:
    """Whether an engine can still answer; ``reason`` says why not."""

    ok: bool
    reason: str | None = None


def tokens_of_length(chars: int) -> int:
    """The token estimate of a text of ``chars`` characters, for engines without a tokenizer
    (3 characters a token errs long for English, so a fit leaves room rather than overflows).

    >>> tokens_of_length(9)
    4
    """
    return chars // 3 + 1


class JudgeEngine(ABC):
    """Base class for engines. Subclasses implement ``generate``. Engines are called from any
    event loop (the sync API runs its own), so they must not bind state to one loop."""

    #: maximum prompt + output tokens, or None when unknown (truncation then uses a default)
    context_window: int | None = None
    #: True when ``generate`` continues ``GenerationRequest.assistant_prefix``
    supports_assistant_prefix: bool = False
    #: True when a sample that ended without a score line should be continued from its own
    #: text plus the start of the score line (needs ``supports_assistant_prefix``)
    score_prefill: bool = False
    #: True when that continuation's scores are decoded under ``GenerationRequest.score_list``
    #: (a valid list is then certain), so a sample whose score line does not parse is
    #: continued too, from the start of that line
    constrains_scores: bool = False
    #: True when ``score_distributions`` reads the judge's distribution over score values
    supports_score_distributions: bool = False
    #: why not, when not (said in the error a config asking for expected scores gets)
    score_distributions_refusal: str = "it has no score_distributions method"
    #: True when ``generate`` returns or raises ``EngineTimeout`` by ``GenerationRequest.expiry``
    #: itself; the core then adds no timeout of its own around it (one timeout per request)
    honours_expiry: bool = False
    #: requests the engine runs at once, when it has such a limit (sizes how many items a
    #: batch keeps in flight)
    max_in_flight: int | None = None

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> list[str]:
        """Return exactly ``request.n`` texts (the generated part only), or raise an
        ``EngineError`` of the kind that failed (``grm_plugin.engines.errors``)."""

    async def score_distributions(
        self, messages: list[dict[str, str]], text: str, starts: Sequence[int]
    ) -> list[ScoreDistribution | None]:
        """The judge's distribution over score values at each character index ``starts`` of its
        judgment ``text`` written for ``messages`` (None where it cannot be measured).
        Engines with ``supports_score_distributions`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} gives no score distributions")

    def count_tokens(self, text: str) -> int:
        """Token count used for truncation; engines with a tokenizer give the exact number."""
        return tokens_of_length(len(text))

    def health(self) -> EngineHealth:
        """Whether the engine can still answer (a server's ``/health`` reports it)."""
        return EngineHealth(ok=True)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections or models."""
