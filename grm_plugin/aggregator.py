"""One item's samples into one ``JudgmentResult``: expected scores (optional), the meta-RM
filter (optional), then the vote; and the results of items that fail or are not judged.

Example:
    >>> from grm_plugin.results import Sample
    >>> from grm_plugin.validation import triage_responses
    >>> from grm_plugin.deadline import NEVER
    >>> from grm_plugin.sync_bridge import run_sync
    >>> agg = Aggregator(engine=None, samples=2, expected_scores=False, meta_rm=None, keep=1)
    >>> votes = [Sample(scores=[8.0, 3.0], order=[0, 1]), Sample(scores=[6.0, 5.0], order=[1, 0])]
    >>> triage = triage_responses(["a", "b"], minimal_content=False)
    >>> run_sync(agg.result(votes, triage, [None, None], "Q", ["a", "b"], NEVER)).scores
    [7.0, 4.0]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .deadline import Expiry
from .engines import JudgeEngine
from .engines.errors import failure_kind
from .meta_rm import MetaRewardModel, rate_samples
from .prompt import Conversation
from .results import FailureKind, JudgmentResult, ResponseFlag, Sample
from .score_distribution import expected_in_original_order
from .sync_bridge import with_timeout
from .validation import Triage
from .voting import select_by_meta, vote

log = logging.getLogger(__name__)


def failure_of(error: Exception) -> tuple[FailureKind, str]:
    """The kind and message of a failed judgment that raised ``error``: the one classification
    that ``score_batch`` and the reward server (``GroupBatcher``) both give.

    A prompt too long for the judge's context is the caller's input, not the engine's fault.

    Example:
        >>> from grm_plugin.engines.errors import EngineError, PromptTooLongError
        >>> failure_of(PromptTooLongError("the prompt alone leaves no room"))
        (<FailureKind.BAD_INPUT: 'bad_input'>, 'bad input: the prompt alone leaves no room')
        >>> failure_of(EngineError("connection refused"))[0].value
        'engine'
    """
    kind = failure_kind(error)
    if kind is FailureKind.BAD_INPUT:
        return kind, f"bad input: {error}"
    return kind, f"{type(error).__name__}: {error}"


def failed_result(
    error: str, kind: FailureKind, responses: Any, flag: str | None = None
) -> JudgmentResult:
    """A failed result with one (None) score and flag list per response, when they can be
    counted (a bad item may not even be a list).

    >>> failed_result("bad input: x", FailureKind.BAD_INPUT, ["a", "b"]).scores
    [None, None]
    """
    n = len(responses) if isinstance(responses, Sequence) and not isinstance(responses, str) else 0
    return JudgmentResult(
        scores=[None] * n,
        score_sums=[None] * n,
        failed=True,
        error=error,
        failure_kind=kind,
        flags=[[flag] if flag else [] for _ in range(n)],
    )


def item_failure_kind(samples: Sequence[Sample]) -> FailureKind:
    """The kind that explains an item with no valid sample: a timeout, else an engine failure,
    else a parse failure (the first cause that, if fixed, could have given a score)."""
    kinds = {s.failure_kind for s in samples}
    for kind in (FailureKind.TIMEOUT, FailureKind.ENGINE, FailureKind.PARSE):
        if kind in kinds:
            return kind
    return FailureKind.ENGINE


def unjudged_scores(triage: Triage, empty_score: float | None) -> list[float | None]:
    """Per response, the score of one the judge never sees: the empty-response value, or None
    for text no engine can carry (judged responses get theirs from the vote)."""
    return [None if i in triage.invalid else empty_score for i in range(len(triage.flags))]


def nothing_judged(
    triage: Triage, empty_score: float | None, minimal_content: bool
) -> JudgmentResult:
    """The result of an item none of whose responses the judge sees."""
    n = len(triage.flags)
    unjudged = unjudged_scores(triage, empty_score)
    if triage.invalid:
        return JudgmentResult(
            scores=unjudged,
            score_sums=[None] * n,
            failed=True,
            error="; ".join(triage.invalid.values()),
            failure_kind=FailureKind.BAD_INPUT,
            flags=triage.flags,
        )
    return JudgmentResult(
        scores=unjudged,
        score_sums=[None] * n,
        failed=empty_score is None,
        error="all responses are empty" + (" or have no content" if minimal_content else ""),
        failure_kind=FailureKind.EMPTY if empty_score is None else None,
        flags=triage.flags,
    )


def no_valid_judgment(
    samples: list[Sample], triage: Triage, unjudged: list[float | None]
) -> JudgmentResult:
    """The failed result of an item whose judged responses got no valid sample: the unjudged
    ones keep their value; the kind is the first cause that could have given a score."""
    n = len(triage.flags)
    judged = set(triage.judged)
    return JudgmentResult(
        scores=[None if i in judged else unjudged[i] for i in range(n)],
        score_sums=[None] * n,
        samples=samples,
        failed=True,
        error="no valid judgment: " + "; ".join(sorted({s.failure or "" for s in samples})),
        failure_kind=item_failure_kind(samples),
        flags=triage.flags,
    )


@dataclass(frozen=True)
class Aggregator:
    """How a judge turns its samples into scores: k asked for, expected scores or parsed ones,
    and the meta RM that picks the ``keep`` voters (None: every valid sample votes)."""

    engine: JudgeEngine | None
    samples: int
    expected_scores: bool
    meta_rm: MetaRewardModel | None
    keep: int

    @property
    def votes(self) -> int:
        """Samples that vote when all parse: ``keep`` with a meta RM, else all k (each result
        says so: ``JudgmentResult.votes``)."""
        return self.keep if self.meta_rm is not None else self.samples

    async def result(
        self,
        samples: list[Sample],
        triage: Triage,
        unjudged: list[float | None],
        prompt: Conversation,
        shown_texts: list[str],
        expiry: Expiry,
    ) -> JudgmentResult:
        """The item's result from its ``samples`` of the ``triage.judged`` responses."""
        valid = [s for s in samples if s.scores is not None]
        if self.expected_scores:
            await self._add_expected_scores(valid, expiry)
        if not valid:
            return no_valid_judgment(samples, triage, unjudged)
        if len(valid) < self.samples:
            # fewer votes than asked for: flagged, so that the cache does not keep it as a
            # complete judgment and callers can tell (grm_plugin.cache)
            for i in triage.judged:
                triage.flags[i].append(ResponseFlag.DEGRADED.value)
        voters = valid
        if self.meta_rm is not None:
            voters = await self._meta_filter(prompt, shown_texts, valid)
        for s in voters:
            s.voted = True
        mean, sums = vote([s.vote_scores() for s in voters], len(triage.judged))  # type: ignore[misc]
        scores: list[float | None] = list(unjudged)
        score_sums: list[float | None] = [None] * len(unjudged)
        for j, i in enumerate(triage.judged):
            scores[i], score_sums[i] = mean[j], sums[j]
        return JudgmentResult(
            scores=scores,
            score_sums=score_sums,
            num_valid=len(valid),
            num_voted=len(voters),
            votes=self.votes,
            samples=samples,
            flags=triage.flags,
        )

    async def _add_expected_scores(self, valid: list[Sample], expiry: Expiry) -> None:
        """Set ``expected_scores`` on each valid sample; a sample whose distributions could not
        be read (deadline, engine error) keeps voting with its parsed scores."""
        engine = self.engine
        assert engine is not None

        async def one(s: Sample) -> None:
            if s.messages is None or s.text is None or s.score_starts is None:
                return
            dists = await with_timeout(
                engine.score_distributions(s.messages, s.text, s.score_starts), expiry
            )
            s.expected_scores = expected_in_original_order(dists, s.order)

        outs = await asyncio.gather(*(one(s) for s in valid), return_exceptions=True)
        for out in outs:
            if isinstance(out, BaseException) and not isinstance(out, Exception):
                raise out
            if isinstance(out, Exception):
                log.warning("expected scores not measured (parsed scores vote): %r", out)

    async def _meta_filter(
        self, prompt: Conversation, shown_texts: list[str], valid: list[Sample]
    ) -> list[Sample]:
        assert self.meta_rm is not None
        meta = await asyncio.to_thread(rate_samples, self.meta_rm, prompt, shown_texts, valid)
        return [valid[i] for i in select_by_meta(meta, min(self.keep, len(valid)))]
