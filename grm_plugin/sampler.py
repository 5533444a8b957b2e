"""Drawing an item's k judgments: responses fitted to the judge's context, k response orders,
one engine request per distinct order, parse-failure retries, and the score-line prefill that
opens the line of the template's declared ``ScoreFormat`` for a judge that stopped short.

Example:
    >>> import random
    >>> from grm_plugin.config import SamplingConfig
    >>> from grm_plugin.deadline import NEVER
    >>> from grm_plugin.sync_bridge import run_sync
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> sampler = Sampler(RuleJudgeEngine(), SamplingConfig(samples=2), None, None, "grm-plugin")
    >>> nonce = item_nonce(None)
    >>> frame = sampler.frame("Say hi", 2, None, nonce)
    >>> shown = sampler.fit("Say hi", ["hi", "hello"], None, frame)
    >>> item = ShownItem("Say hi", shown, None, shown, None, nonce, frame)
    >>> drawn = run_sync(sampler.sample(item, NEVER, rng=random.Random(0), seeder=None))
    >>> [len(s.scores) for s in drawn]
    [2, 2]
    >>> drawn[0].messages == sampler.messages("Say hi", shown, tuple(drawn[0].order), nonce,
    ...                                       None, None)  # the frame, filled: the same text
    True
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from .config import SamplingConfig
from .deadline import Expiry
from .engines import JudgeEngine
from .engines.base import EngineError, GenerationRequest, tokens_of_length
from .engines.errors import PromptTooLongError, failure_kind
from .engines.score_grammar import ScoreList
from .parsing import before_score_line, parse_judgment
from .prompt import (
    Conversation,
    Message,
    build_judge_messages,
    fit_responses,
    neutralize_control_tokens,
)
from .results import FailureKind, Sample
from .sync_bridge import cancelled_by_caller, with_timeout
from .templates import JudgeTemplate, Skeleton, fenced_item, load_template

#: assumed context (tokens) when the engine does not know its own
DEFAULT_CONTEXT_WINDOW = 32768
#: all permutations are cycled through when there are at most this many (n <= 6)
_MAX_ENUMERATED_ORDERS = 720
#: judgments shorter than this (in all, per request) are parsed on the event loop: a thread
#: hop costs ~0.3 ms of CPU, far more than parsing a few kilobytes (benchmarks/client_floor.py)
_INLINE_PARSE_CHARS = 64_000

Order = tuple[int, ...]


def sample_orders(n: int, k: int, rng: random.Random, shuffle: bool) -> list[Order]:
    """Response orders for k samples. With few responses every order is used about equally
    often (position bias then cancels in the vote); otherwise orders are random.

    >>> sample_orders(2, 4, random.Random(0), shuffle=True).count((1, 0))
    2
    """
    identity = tuple(range(n))
    if not shuffle or n == 1:
        return [identity] * k
    if n <= 6 and k > 1:
        perms = list(itertools.permutations(identity))
        if len(perms) <= _MAX_ENUMERATED_ORDERS:
            rng.shuffle(perms)
            return [perms[j % len(perms)] for j in range(k)]
    return [tuple(rng.sample(identity, n)) for _ in range(k)]


def _texts(out: Any) -> bool:
    """True for what ``generate`` must return: a list of strings (a judge server may answer
    numbers or nulls, which are its failure, not the caller's bad input)."""
    return isinstance(out, list) and all(isinstance(t, str) for t in out)


def item_nonce(seeder: random.Random | None) -> str:
    """The fence code of one item's prompt: random, or the seeder's first draw (a seed then
    reproduces the prompt). Always 8 characters, as the fit's skeleton's ``xxxxxxxx``."""
    return secrets.token_hex(4) if seeder is None else f"{seeder.getrandbits(32):08x}"


@dataclass(frozen=True)
class PromptFrame:
    """An item's prompt with its responses left open: the template's skeleton (one render per
    response count and rubric) and the item's fenced conversation, fence code and reference.

    Each order's messages are one join of it with the responses' texts (``fill``): the text a
    shipped template renders, without a render or a search per item or order. A template file
    may show a response other than verbatim in its fence, so it gets no frame (``build`` gives
    None) and renders each order.
    """

    skeleton: Skeleton
    conversation: str
    nonce: str
    reference: str

    @classmethod
    def build(
        cls,
        template: str | JudgeTemplate,
        prompt: Conversation,
        n: int,
        nonce: str,
        principles: str | None,
        reference: str | None,
    ) -> PromptFrame | None:
        """The frame of an item with ``n`` responses (``template``: a name, a file or a loaded
        template), or None where filling it could differ from a render (a template file: see
        ``JudgeTemplate.skeleton``)."""
        loaded = load_template(template) if isinstance(template, str) else template
        skeleton = loaded.skeleton(n, principles, bool(reference)) if loaded.version else None
        if skeleton is None or not nonce:
            return None
        conversation, fenced_reference = fenced_item(prompt, reference, nonce)
        return cls(skeleton, conversation, nonce, fenced_reference or "")

    def fill(self, texts: list[str]) -> list[Message]:
        """The messages showing ``texts`` (in shown order), as the template renders them."""
        return self.skeleton.join(
            [neutralize_control_tokens(t) for t in texts],
            conversation=self.conversation,
            fence_code=self.nonce,
            reference=self.reference,
        )

    def empty_lengths(self) -> list[int]:
        """Per message, its length with every response empty (the prompt's overhead), without
        joining its text."""
        c, n, r = len(self.conversation), len(self.nonce), len(self.reference)
        return [f + nc * c + nn * n + nr * r for f, nc, nn, nr in self.skeleton.sizes]


@dataclass(frozen=True)
class ShownItem:
    """One item as the judge is shown it: the responses after fitting (``shown``), the
    caller's originals (quoted scores in either are not the judge's), the fence code and,
    where there is one, the prompt's frame (each order's messages without a render)."""

    prompt: Conversation
    shown: list[str]
    reference: str | None
    originals: list[str]
    hint_best: int | None
    nonce: str
    frame: PromptFrame | None = None


def parse_samples(texts: list[str], order: Order, attempt: int, item: ShownItem) -> list[Sample]:
    """A ``Sample`` per judge text of ``order``, its scores back in the original order."""
    return [parse_sample(t, order, attempt, item) for t in texts]


def parse_sample(text: str, order: Order, attempt: int, item: ShownItem) -> Sample:
    """One judge text as a ``Sample``: scores mapped back from shown to original order, or a
    parse failure."""
    parsed = parse_judgment(
        text, len(order), quoted=[*item.originals, *item.shown], fence_code=item.nonce
    )
    sample = Sample(
        text=text,
        principles=parsed.principles,
        critique=parsed.critique,
        order=list(order),
        attempt=attempt,
    )
    if parsed.scores is None:
        sample.failure = f"parse: {parsed.error}"
        sample.failure_kind = FailureKind.PARSE
    else:
        back = [0.0] * len(order)
        for shown_pos, original_idx in enumerate(order):
            back[original_idx] = parsed.scores[shown_pos]
        sample.scores = back
        sample.score_starts = parsed.score_starts
    return sample


def _as_answer(out: Any) -> list[str] | Exception:
    """An engine's answer as texts or the exception that explains it: its own CancelledError
    and a non-list answer are its failures; the caller's cancel (and any other
    BaseException) goes on."""
    if isinstance(out, asyncio.CancelledError) and not cancelled_by_caller():
        # gather returned, so we were not cancelled: the engine raised it on its own
        return EngineError(f"the engine's request was cancelled ({out or 'no reason'})")
    if isinstance(out, BaseException):
        if not isinstance(out, Exception):
            raise out
        return out
    if not _texts(out):
        return EngineError(
            f"the engine returned {type(out).__name__} {str(out)[:80]!r}, not a list of strings"
        )
    return out


def _cut_by_the_deadline(drawn: list[Sample]) -> None:
    """Parse failures of texts returned after the expiry become timeouts: a local engine stops
    writing at the expiry and returns what it has, which can beat the timeout guard by a hair;
    a text cut short by the deadline is not the judge's failure to write a score line."""
    for s in drawn:
        if s.failure_kind is FailureKind.PARSE:
            s.failure = "timeout: the deadline passed while the judge was writing"
            s.failure_kind = FailureKind.TIMEOUT


async def _continued(
    old: Sample, request: GenerationRequest, out: Any, item: ShownItem, dropped: str = ""
) -> Sample | None:
    """``old`` continued by the prefill's answer ``out``, or None when that gives no score
    (the original parse failure stands); ``dropped``: the end of its text the prefill left
    out (its invalid score line)."""
    if isinstance(out, BaseException) and not isinstance(out, Exception):
        raise out
    if isinstance(out, BaseException) or not _texts(out) or not out:
        return None
    text = (request.assistant_prefix or "") + out[0]
    (new,) = await asyncio.to_thread(parse_samples, [text], tuple(old.order), old.attempt, item)
    if new.scores is None:
        return None
    new.messages = old.messages
    if request.score_list is not None:
        new.constrained = True
        new.dropped_line = dropped or None
    return new


@dataclass(frozen=True)
class Sampler:
    """A judge's way of drawing samples: its engine, sampling settings, per-request timeout,
    rubric and template (a spec: the file is re-read when it changes)."""

    engine: JudgeEngine
    sampling: SamplingConfig
    request_timeout: float | None
    principles: str | None
    template: str

    def fit(
        self,
        prompt: Conversation,
        responses: list[str],
        reference: str | None,
        frame: PromptFrame | None = None,
    ) -> list[str]:
        """Truncate responses so that prompt + judgment fit the engine's context (``frame``:
        the item's, when it has one: its length is all the default token estimate reads)."""
        window = self.engine.context_window or DEFAULT_CONTEXT_WINDOW
        max_new = self.sampling.max_new_tokens
        joined = "".join(responses)
        tokens = self.engine.count_tokens(joined)
        overhead = self._overhead(prompt, len(responses), reference, frame)
        budget = window - max_new - overhead
        if tokens <= budget:
            return responses
        if budget <= 0:
            raise PromptTooLongError(
                f"the prompt alone (~{overhead} tokens) leaves no room for the responses in a "
                f"{window}-token context with {max_new} new tokens"
            )
        chars_per_token = len(joined) / max(tokens, 1)
        # 0.95: token counts of a cut text are not exactly proportional to its length
        return fit_responses(responses, int(budget * chars_per_token * 0.95))

    def _overhead(
        self, prompt: Conversation, n: int, reference: str | None, frame: PromptFrame | None
    ) -> int:
        """Tokens of the prompt without the responses' texts, plus a margin."""
        if frame is not None and self._counts_by_length():
            # the frame is the skeleton with the item's fence code for ``xxxxxxxx``: the same
            # length, so the same estimate, without a render of its own
            return sum(map(tokens_of_length, frame.empty_lengths())) + 64
        skeleton = build_judge_messages(
            prompt,
            [""] * n,
            nonce="x" * 8,
            principles=self.principles,
            reference=reference,
            template=self.template,
        )
        return sum(self.engine.count_tokens(m["content"]) for m in skeleton) + 64

    def _counts_by_length(self) -> bool:
        """True when the engine estimates tokens from the text's length (no tokenizer)."""
        return type(self.engine).count_tokens is JudgeEngine.count_tokens

    def frame(
        self, prompt: Conversation, n: int, reference: str | None, nonce: str
    ) -> PromptFrame | None:
        """The item's ``PromptFrame`` (None where it has none: see ``PromptFrame.build``)."""
        if len(nonce) != 8:  # the frame stands in for the skeleton, whose code has 8
            return None
        return PromptFrame.build(self.template, prompt, n, nonce, self.principles, reference)

    def messages(
        self,
        prompt: Conversation,
        shown: list[str],
        order: Order,
        nonce: str,
        reference: str | None,
        hint_best: int | None,
    ) -> list[Message]:
        """The judge's messages for ``shown`` in ``order`` (``order[j]``: shown j-th)."""
        return build_judge_messages(
            prompt,
            [shown[i] for i in order],
            nonce=nonce,
            principles=self.principles,
            reference=reference,
            hint_best=None if hint_best is None else order.index(hint_best),
            template=self.template,
        )

    async def sample(
        self,
        item: ShownItem,
        expiry: Expiry,
        *,
        rng: random.Random,
        seeder: random.Random | None,
    ) -> list[Sample]:
        """Draw k samples; re-sample parse failures up to ``parse_retries`` rounds, all within
        one ``expiry`` (the item's deadline, or its batch's if sooner). ``rng`` draws the
        orders; ``seeder`` (seeded judges: it drew ``item.nonce`` first) the engine's seeds."""
        cfg = self.sampling
        shown = item.shown
        samples: list[Sample] = []
        missing = cfg.samples
        for attempt in range(cfg.parse_retries + 1):
            if attempt > 0 and expiry.passed():
                break  # no time left for another round: what failed stays failed
            temperature = cfg.temperature if cfg.samples > 1 else 0.0
            if attempt > 0 and temperature == 0.0:
                temperature = cfg.retry_temperature  # greedy would repeat the same failure
            orders = sample_orders(len(shown), missing, rng, cfg.shuffle)
            new = await self._run_orders(item, orders, temperature, attempt, expiry, seeder)
            if self.engine.score_prefill:
                new = await self._prefill_score_lines(new, item, expiry, seeder)
            samples += new
            # engine failures are not retried here: the engine already retried within its
            # deadline; parse failures are
            missing = sum(1 for s in new if s.failure_kind is FailureKind.PARSE)
            if missing == 0:
                break
        return samples

    def _request(
        self,
        messages: list[Message],
        expiry: Expiry,
        seeder: random.Random | None,
        **settings: Any,
    ) -> GenerationRequest:
        return GenerationRequest(
            messages,
            seed=None if seeder is None else seeder.getrandbits(31),
            request_timeout=self.request_timeout,
            expiry=expiry,
            **settings,
        )

    async def _run_orders(
        self,
        item: ShownItem,
        orders: list[Order],
        temperature: float,
        attempt: int,
        expiry: Expiry,
        seeder: random.Random | None,
    ) -> list[Sample]:
        # one request per distinct order, n = how many samples use it: shares the prompt prefix
        groups: dict[Order, int] = {}
        for o in orders:
            groups[o] = groups.get(o, 0) + 1
        requests = [
            self._request(
                self._order_messages(item, order),
                expiry,
                seeder,
                n=count,
                temperature=temperature,
                max_tokens=self.sampling.max_new_tokens,
            )
            for order, count in groups.items()
        ]
        outputs = await self._outputs(requests, expiry)
        by_order: dict[Order, list[Sample]] = {}
        for (order, count), out, request in zip(groups.items(), outputs, requests, strict=True):
            drawn = await self._samples_of(out, order, count, attempt, item, expiry)
            for s in drawn:
                s.messages = request.messages
            by_order[order] = drawn
        # back in the order the orders were drawn, so that the first j samples are what k = j
        # would have drawn (evaluation subsamples one draw for every k)
        return [by_order[o].pop(0) for o in orders]

    async def _outputs(self, requests: list[GenerationRequest], expiry: Expiry) -> list[Any]:
        """Each request's texts, or the exception it raised (the engine gets the expiry to
        bound its tries; ``_generate`` guards engines that ignore it)."""
        if len(requests) == 1:  # k = 1, or k samples of one order: gather would cost a task
            try:
                return [await self._generate(requests[0], expiry)]
            except (Exception, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError) and cancelled_by_caller():
                    raise
                return [e]
        return await asyncio.gather(
            *(self._generate(r, expiry) for r in requests), return_exceptions=True
        )

    async def _samples_of(
        self, out: Any, order: Order, count: int, attempt: int, item: ShownItem, expiry: Expiry
    ) -> list[Sample]:
        """The ``count`` samples of one order from the engine's answer ``out``."""
        out = _as_answer(out)
        if isinstance(out, Exception):
            kind = failure_kind(out)
            failure = f"{kind.value}: {type(out).__name__}: {out}"
            return [
                Sample(order=list(order), attempt=attempt, failure=failure, failure_kind=kind)
                for _ in range(count)
            ]
        texts = out[:count]
        if sum(map(len, texts)) <= _INLINE_PARSE_CHARS:
            drawn = parse_samples(texts, order, attempt, item)
        else:
            # a thread, as the server decodes bodies in one: parsing is linear, a long text
            # takes a while, and the loop serves every other item meanwhile
            drawn = await asyncio.to_thread(parse_samples, texts, order, attempt, item)
        if expiry.passed():
            _cut_by_the_deadline(drawn)
        # a custom engine that returns too few texts costs those samples, not the item
        short, kind = f"engine: returned {len(out)} texts for n={count}", FailureKind.ENGINE
        return drawn + [
            Sample(order=list(order), attempt=attempt, failure=short, failure_kind=kind)
            for _ in range(count - len(out))
        ]

    async def _prefill_score_lines(
        self,
        samples: list[Sample],
        item: ShownItem,
        expiry: Expiry,
        seeder: random.Random | None,
    ) -> list[Sample]:
        """Continue each sample that ended without a parsable score line from its own text plus
        the start of the template's score line (``Final Scores: [[`` or ``\\boxed{``: a few
        tokens, small judges then write the numbers) rather than re-sampling the whole judgment;
        a sample this does not fix stays a parse failure. An engine that ``constrains_scores``
        writes the numbers under the score list's grammar, and continues a sample whose score
        line is there but invalid from that line's start (its own line dropped)."""
        todo = [i for i, s in enumerate(samples) if s.failure_kind is FailureKind.PARSE and s.text]
        if not todo or not self.engine.supports_assistant_prefix:
            return samples
        # the template asked for this format: a prefill in another one contradicts the prompt
        score_format = load_template(self.template).score_format
        constrained = self.engine.constrains_scores
        grammar = ScoreList(len(item.shown), score_format.line_end) if constrained else None
        requests, dropped = [], []
        for i in todo:
            text = samples[i].text or ""
            if constrained:
                kept = before_score_line(text, item.nonce)
                dropped.append(text[len(kept) :].strip())
                text = kept
            else:
                dropped.append("")
            requests.append(
                self._request(
                    # the messages its sample was drawn with: the same render, not a second one
                    samples[i].messages or self._order_messages(item, tuple(samples[i].order)),
                    expiry,
                    seeder,
                    n=1,
                    max_tokens=8 + 4 * len(item.shown),
                    assistant_prefix=text.rstrip() + "\n\n" + score_format.line_start,
                    score_list=grammar,
                )
            )
        outputs = await asyncio.gather(
            *(self._generate(r, expiry) for r in requests), return_exceptions=True
        )
        fixed = list(samples)
        for i, request, out, cut in zip(todo, requests, outputs, dropped, strict=True):
            continued = await _continued(samples[i], request, out, item, cut)
            if continued is not None:
                fixed[i] = continued
        return fixed

    def _order_messages(self, item: ShownItem, order: Order) -> list[Message]:
        if item.frame is not None and item.hint_best is None:
            return item.frame.fill([item.shown[i] for i in order])
        return self.messages(
            item.prompt, item.shown, order, item.nonce, item.reference, item.hint_best
        )

    def _generate(
        self, request: GenerationRequest, expiry: Expiry
    ) -> Coroutine[Any, Any, list[str]]:
        """The engine's texts for ``request``, bounded by ``expiry`` here only when the engine
        does not bound itself (``honours_expiry``): one timeout per request, not two."""
        coro = self.engine.generate(request)
        return coro if self.engine.honours_expiry else with_timeout(coro, expiry)
