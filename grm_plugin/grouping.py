"""Judge the responses of one prompt together when they arrive one by one.

RL frameworks often ask for rewards one sample at a time (OpenRLHF posts each rollout as soon as
it is generated), while a generative judge is at its best seeing the responses of a prompt side
by side, and one judgment of n responses is cheaper than n judgments of one. ``GroupBatcher``
holds items that share a group key (the prompt and its reference) for a short window and judges
them in one call:

- the first item of a key opens a group; the group closes when ``max_size`` items are in it or
  ``window`` seconds after it opened, whichever comes first;
- a group that closes with one item is judged pointwise, as without the batcher;
- identical responses in a group are shown to the judge once and share the score;
- every item gets an answer by its own ``Expiry``: a group judgment still running then answers
  that item with a timeout failure; the judgment itself runs until the latest expiry of its
  members (handed to ``rm.ascore(expiry=...)``, so the judge's engine requests stop there too),
  and a member with little time left does not cost the others their judgment.

A group is split when its items do not reach the same batcher within one window (different
processes or servers, or generation times further apart than the window): the parts are judged
separately, so their scores come from different judgments (each one still a 1-10 score of the
same rubric, but not a side-by-side comparison).

Example:
    >>> import asyncio
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.deadline import Expiry
    >>> from grm_plugin.testing import RuleJudgeEngine, shown_responses
    >>> engine = RuleJudgeEngine()
    >>> batcher = GroupBatcher(GenerativeRewardFn(engine), window=0.5, max_size=3)
    >>> async def three_samples():
    ...     items = [RewardItem("Say hi", r, group="p1") for r in ("hi", "hey", "hi")]
    ...     expiry = Expiry.after(10)  # one clock for the three: 10 s from now
    ...     return await asyncio.gather(*(batcher.judge(it, expiry=expiry) for it in items))
    >>> [j.score for j in asyncio.run(three_samples())]
    [3.0, 4.0, 3.0]
    >>> [sorted(shown_responses(r)) for r in engine.requests]  # one judgment, "hi" shown once
    [['hey', 'hi']]
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from .deadline import Expiry
from .prompt import Conversation
from .results import FailureKind, JudgmentResult
from .reward import GenerativeRewardFn, failure_of, validate_item

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardItem:
    """One response to judge. Items with the same ``group`` (not None) share a prompt and a
    reference and may be judged together; ``group=None`` is always judged alone."""

    prompt: Conversation
    response: str
    reference: str | None = None
    group: Hashable | None = None


@dataclass(frozen=True)
class Judged:
    """What one item gets back: the judgment of its group and where it is in it."""

    #: the group's judgment (a failed one on timeout or engine error); scores are per distinct
    #: response, in ``index`` order
    result: JudgmentResult
    #: this item's response in ``result.scores``
    index: int
    #: for every item of the group (this one included), its index in ``result.scores``
    members: tuple[int, ...]
    #: this item's position in ``members``
    position: int

    @property
    def score(self) -> float | None:
        """This item's 1-10 score (None: no score)."""
        scores = self.result.scores
        return scores[self.index] if self.index < len(scores) else None

    @property
    def distinct(self) -> int:
        """How many distinct responses the judge saw together."""
        return len(set(self.members))


@dataclass
class GroupStats:
    """Counts since start: items in, judge calls made, distinct responses shown."""

    items: int = 0
    judgments: int = 0
    responses_judged: int = 0
    groups_by_size: dict[int, int] = field(default_factory=dict)


#: failures of the input, not of the judge: they say nothing about whether the judge works
_INPUT_FAILURES = frozenset({FailureKind.BAD_INPUT, FailureKind.EMPTY})


class RecentJudgments:
    """The outcomes of the last ``size`` judge calls: whether the judge works now (a server's
    ``/health``). Failures of the input (bad input, empty responses) are not counted.

    Example:
        >>> recent = RecentJudgments(size=4)
        >>> down = JudgmentResult(failed=True, failure_kind=FailureKind.ENGINE, error="down")
        >>> for result in (JudgmentResult(scores=[7.0]), down, down, down, down):
        ...     recent.record(result)
        >>> recent.count, recent.failed, recent.success_rate, recent.failing()  # the last 4
        (4, 4, 0.0, True)
    """

    def __init__(self, size: int = 32) -> None:
        self._failed: deque[bool] = deque(maxlen=size)
        self.last_error: str | None = None

    def record(self, result: JudgmentResult) -> None:
        if result.failed and result.failure_kind in _INPUT_FAILURES:
            return
        self._failed.append(result.failed)
        if result.failed:
            self.last_error = result.error

    @property
    def count(self) -> int:
        return len(self._failed)

    @property
    def failed(self) -> int:
        return sum(self._failed)

    @property
    def success_rate(self) -> float | None:
        """Share of the recent judgments that gave scores (None: none yet)."""
        return (self.count - self.failed) / self.count if self._failed else None

    def failing(self, min_count: int = 3) -> bool:
        """True when at least ``min_count`` judgments were made recently and all failed."""
        return self.count >= min_count and self.failed == self.count


@dataclass
class _Group:
    key: Hashable | None
    prompt: Conversation
    reference: str | None
    items: list[RewardItem] = field(default_factory=list)
    expiries: list[Expiry] = field(default_factory=list)
    done: asyncio.Future[JudgmentResult] | None = None
    responses: list[str] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class GroupBatcher:
    """Gathers items of one group key for up to ``window`` seconds (at most ``max_size``) and
    judges them with one ``rm.ascore`` call; at most ``max_concurrent`` judgments run at once.

    ``window=0`` or ``max_size=1`` judges every item alone (no waiting). Use it from one event
    loop (it binds its futures and limits to the loop of the first call).
    """

    def __init__(
        self,
        rm: GenerativeRewardFn,
        *,
        window: float = 0.0,
        max_size: int = 8,
        max_concurrent: int = 256,
    ) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {window}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.rm = rm
        self.window = window
        self.max_size = max_size
        self.max_concurrent = max_concurrent
        self.stats = GroupStats()
        self.recent = RecentJudgments()
        self._open: dict[Hashable, _Group] = {}
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def judge(self, item: RewardItem, *, expiry: Expiry) -> Judged:
        """Judge ``item`` (with the others of its group); answers by ``expiry`` (the caller's
        one clock: its window wait, slot wait and judgment all count within it)."""
        self.stats.items += 1
        group = self._join(item, expiry)
        position = len(group.items) - 1
        left = expiry.remaining()
        bound = None if left is None else max(left, 0.0)
        try:
            assert group.done is not None
            # shield: this item giving up must not cancel the judgment of the others
            result = await asyncio.wait_for(asyncio.shield(group.done), bound)
        except asyncio.TimeoutError:
            result = _failed(FailureKind.TIMEOUT, f"no judgment within {bound or 0.0:.1f}s")
        if not result.votes:  # the batcher's own failures: the voting-sum scale needs the judge's k
            result = result.model_copy(update={"votes": getattr(self.rm, "votes", 0)})
        return Judged(result, group.members[position], tuple(group.members), position)

    # ------------------------------------------------------------------------------ internals

    def _join(self, item: RewardItem, expiry: Expiry) -> _Group:
        grouping = item.group is not None and self.window > 0 and self.max_size > 1
        group = self._open.get(item.group) if grouping else None
        if group is None:
            loop = asyncio.get_running_loop()
            group = _Group(item.group, item.prompt, item.reference, done=loop.create_future())
            if grouping:
                self._open[item.group] = group
                group.timer = loop.call_later(self.window, self._close, group)
        group.items.append(item)
        group.expiries.append(expiry)
        if item.response in group.responses:
            group.members.append(group.responses.index(item.response))
        else:
            group.members.append(len(group.responses))
            group.responses.append(item.response)
        if not grouping or len(group.items) >= self.max_size:
            self._close(group)
        return group

    def _close(self, group: _Group) -> None:
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if self._open.get(group.key) is group:
            del self._open[group.key]
        task = asyncio.get_running_loop().create_task(self._run(group))
        self._tasks.add(task)  # a reference, so the task is not collected mid-run
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: _Group) -> None:
        n = len(group.items)
        self.stats.groups_by_size[n] = self.stats.groups_by_size.get(n, 0) + 1
        # the latest expiry, not the earliest: each item is answered by its own expiry anyway
        # (``judge``), so a member with little time left (a late joiner, a client whose body
        # took long) times out alone while the others of its prompt still get the judgment
        expiry = group.expiries[0]
        for other in group.expiries[1:]:
            expiry = expiry.later(other)
        budget = expiry.remaining()
        try:
            validate_item(group.prompt, group.responses, group.reference)
        except (TypeError, ValueError) as e:
            result = _failed(FailureKind.BAD_INPUT, f"bad input: {e}")
            assert group.done is not None
            group.done.set_result(result)
            return
        try:
            # the judge stops its engine requests at ``expiry`` itself; this bounds the wait
            # for a judging slot too
            result = await asyncio.wait_for(
                self._judge_group(group, expiry), None if budget is None else max(budget, 0.0)
            )
        except asyncio.TimeoutError:
            result = _failed(FailureKind.TIMEOUT, "the group's deadline passed while judging")
        except Exception as e:  # noqa: BLE001 - a judge problem is a failed judgment, not a crash
            log.warning("judging a group of %d failed: %s: %s", n, type(e).__name__, e)
            # the core's classification, so the server and score_batch agree on whose fault
            result = _failed(*failure_of(e))
        self.recent.record(result)
        assert group.done is not None
        if not group.done.done():
            group.done.set_result(result)

    async def _judge_group(self, group: _Group, expiry: Expiry) -> JudgmentResult:
        if self._slots is None:  # made inside the running loop, which it binds to
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            self.stats.judgments += 1
            self.stats.responses_judged += len(group.responses)
            return await self.rm.ascore(
                group.prompt, group.responses, group.reference, expiry=expiry
            )

    async def aclose(self) -> None:
        """Wait for the judgments that are still running (e.g. on shutdown)."""
        for group in list(self._open.values()):
            self._close(group)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _failed(kind: FailureKind, error: str) -> JudgmentResult:
    return JudgmentResult(failed=True, failure_kind=kind, error=error)
