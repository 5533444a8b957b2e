"""GenerativeRewardFn: an LLM judge's principles, critiques and scores, sampled k times, voted.

The judge is thin: its parts each have one job. ``grm_plugin.validation`` checks the input,
``grm_plugin.sampler`` draws the k judgments (orders, requests, parse retries, score-line
prefill), ``grm_plugin.aggregator`` turns them into one result (expected scores, meta-RM filter,
vote), ``grm_plugin.sync_bridge`` runs it all from sync code; ``grm_plugin.cache`` reuses
earlier judgments.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.engines import JudgeEngine
    >>> class FixedJudge(JudgeEngine):  # a stand-in; use a real engine or the default judge
    ...     async def generate(self, request):
    ...         text = "Specific Criteria: be right\\nAnalysis: ok\\nFinal Scores: [[8]]"
    ...         return [text] * request.n
    >>> rm = GenerativeRewardFn(FixedJudge(), samples=4)
    >>> rm.score("What is 2+2?", ["4"]).scores
    [8.0]
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import random
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .aggregator import (
    Aggregator,
    failed_result,
    failure_of,
    item_failure_kind,
    nothing_judged,
    unjudged_scores,
)
from .cache import CacheConfig, JudgmentCache, fingerprint, template_digest
from .config import JudgeConfig, SamplingConfig, checked_empty_response_score
from .deadline import NEVER, Deadline, Expiry
from .engines import EngineSpec, JudgeEngine, make_engine
from .engines.errors import PromptTooLongError
from .meta_rm import MetaRewardModel, meta_rm_identity
from .prompt import Conversation
from .results import FailureKind, JudgmentResult
from .sampler import Sampler, ShownItem, item_nonce, sample_orders
from .sync_bridge import cancelled_by_caller, run_sync, run_windowed
from .templates import DEFAULT_TEMPLATE, checked_template
from .validation import (
    check_batch,
    check_hint,
    check_shown_order,
    triage_responses,
    validate_item,
)

# re-exported: adapters and callers import these from here
__all__ = [
    "GenerativeRewardFn",
    "failure_of",
    "item_failure_kind",
    "run_sync",
    "sample_orders",
    "validate_item",
]

log = logging.getLogger(__name__)

#: items ``ascore_batch`` judges at once when the engine does not say how many requests it
#: runs at once (``max_in_flight``); 4x that when it does
_ITEMS_IN_FLIGHT = 1024

#: the order generator of every unseeded item: one, seeded by the OS, rather than a new one
#: per item (seeding a ``random.Random()`` reads 2.5 kB from the OS: ~13 us an item)
_UNSEEDED = random.Random()
if hasattr(os, "register_at_fork"):
    # a fork()ed child would otherwise draw the very orders its parent and siblings draw
    os.register_at_fork(after_in_child=_UNSEEDED.seed)


def _unless_batch_timeout(result: JudgmentResult, batch: Expiry) -> JudgmentResult | None:
    """None for an item that timed out as the batch deadline passed: its engine, bounded by
    the same deadline, may answer a hair before the batch gives up on it; either way it is
    an item the batch deadline left unjudged (flagged ``timeout``), not a race's outcome."""
    if result.failure_kind is FailureKind.TIMEOUT and batch.passed():
        return None
    return result


def _with_votes(result: JudgmentResult, votes: int) -> JudgmentResult:
    """``result`` saying how many votes its judge is set up for (a copy: cached results are
    shared by judges that may vote differently)."""
    return result if result.votes == votes else result.model_copy(update={"votes": votes})


class GenerativeRewardFn:
    """A generative reward model: the judge writes principles, critiques and 1-10 scores.

    Args:
        engine: a ``JudgeEngine``, an engine config, a server URL (``http://...``), a model path /
            hub id / ``.gguf`` file, or None for the embedded demo judge.
        samples: k judgments per item (greedy when 1, else ``temperature``).
        meta_rm: a ``MetaRewardModel``; when given, only the ``keep`` best-rated samples vote.
        keep: samples kept by the meta RM (default ``samples // 2``, at least 1).
        deadline: a ``Deadline`` (or a dict of its parts): seconds per engine request, per item
            (retries included) and per ``score_batch`` call.
        principles: a rubric added to every prompt.
        empty_response_score: score for empty responses (None: not judged, flagged, score None).
        minimal_content: responses with no content token (":", "Thought process:"; see
            ``grm_plugin.content``) get the empty-response policy too, flagged
            ``minimal_content``.
        cache: the judgment cache (``CacheConfig``; default off).

    The keywords are a ``JudgeConfig``'s parts: ``from_config`` builds the same object from
    one, by the same code.

    Example:
        >>> rm = GenerativeRewardFn("http://127.0.0.1:8000/v1", samples=8)  # doctest: +SKIP
        >>> rm.score("Name a prime.", ["7", "9"]).scores  # doctest: +SKIP
        [8.1, 2.4]
    """

    def __init__(
        self,
        engine: EngineSpec = None,
        *,
        samples: int = 1,
        temperature: float = 0.5,
        max_new_tokens: int = 768,
        shuffle: bool = True,
        parse_retries: int = 2,
        keep: int | None = None,
        seed: int | None = None,
        expected_scores: bool = False,
        deadline: Deadline | Mapping[str, float | None] | None = None,
        meta_rm: MetaRewardModel | None = None,
        principles: str | None = None,
        empty_response_score: float | None = None,
        template: str | None = None,
        minimal_content: bool = False,
        cache: CacheConfig | None = None,
    ) -> None:
        config = JudgeConfig(
            sampling=SamplingConfig(
                samples=samples,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                shuffle=shuffle,
                parse_retries=parse_retries,
                keep=keep,
                seed=seed,
                expected_scores=expected_scores,
            ),
            deadline=(
                deadline
                if isinstance(deadline, Deadline)
                else Deadline.model_validate(deadline or {})
            ),
            principles=principles,
            template=str(template or DEFAULT_TEMPLATE),
            # checked here too: a bool or a string is refused with a TypeError, not coerced
            empty_response_score=checked_empty_response_score(empty_response_score),
            minimal_content=minimal_content,
            cache=cache or CacheConfig(),
        )
        self._build(config, engine, meta_rm)

    @classmethod
    def from_config(
        cls,
        config: JudgeConfig | str | Path | dict,
        *,
        engine: JudgeEngine | None = None,
        meta_rm: MetaRewardModel | None = None,
    ) -> GenerativeRewardFn:
        """Build from a ``JudgeConfig``, a dict, or a YAML/JSON file path.

        ``engine`` overrides the configured engine (e.g. one that an adapter already holds).
        """
        config = JudgeConfig.coerce(config)
        self = cls.__new__(cls)
        self._build(config, config.engine if engine is None else engine, meta_rm)
        return self

    def _build(
        self, config: JudgeConfig, engine: EngineSpec, meta_rm: MetaRewardModel | None
    ) -> None:
        """The one constructor path: ``config``'s settings (its ``engine`` is not read:
        ``engine`` is the spec or instance to judge with)."""
        if meta_rm is not None and not isinstance(meta_rm, MetaRewardModel):
            raise TypeError("meta_rm must have a score_judgments(prompt, shown, judgments) method")
        self.sampling: SamplingConfig = config.sampling
        self.deadline: Deadline = config.deadline
        self.principles: str | None = config.principles
        self.empty_response_score: float | None = config.empty_response_score
        self.minimal_content: bool = config.minimal_content
        self.template: str = checked_template(config.template)
        self.meta_rm = meta_rm
        self._items_started = 0  # an int, not itertools.count: it pickles everywhere
        self._judge_identity: str | None = None
        # a spec (URL, path, config, None) is kept so that the object pickles as its config
        self._engine_spec = None if isinstance(engine, JudgeEngine) else (engine,)
        self.engine: JudgeEngine = make_engine(engine)
        self._check_engine()
        self.cache_config = config.cache

    @property
    def items_started(self) -> int:
        """Items this judge has started; a seeded judge's next item draws its response orders,
        fence code and sampling seeds as its ``items_started + 1``-th item. A run that resumes
        a stopped one sets it back to where that run stood, so the items left are judged as
        the stopped run would have judged them (``grm_plugin.draw_log``).

        >>> from grm_plugin.testing import RuleJudgeEngine
        >>> rm = GenerativeRewardFn(RuleJudgeEngine())
        >>> _ = rm.score("Q", ["a", "b"])
        >>> rm.items_started
        1
        """
        return self._items_started

    @items_started.setter
    def items_started(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"items_started must be an int >= 0, got {n!r}")
        self._items_started = n

    def _check_engine(self) -> None:
        if self.sampling.expected_scores and not self.engine.supports_score_distributions:
            raise ValueError(
                f"expected_scores needs an engine that gives score distributions (the "
                f"transformers engine in float32 or bfloat16): {type(self.engine).__name__} "
                f"does not: {self.engine.score_distributions_refusal}"
            )

    @property
    def cache_config(self) -> CacheConfig:
        """The judgment cache's settings; setting them builds a new cache (and opens its store
        now, so that a store that cannot be used fails here: ``CacheStoreError``)."""
        return self._cache_config

    @cache_config.setter
    def cache_config(self, config: CacheConfig) -> None:
        self._cache_config = config
        identity = self._judgment_fingerprint() if config.max_items else ""
        self._judgment_cache = JudgmentCache(config, identity)

    @property
    def keep(self) -> int:
        """How many samples vote when a meta RM is set."""
        return self.sampling.keep or max(1, self.sampling.samples // 2)

    @property
    def votes(self) -> int:
        """How many samples vote when all parse (``JudgmentResult.votes`` of every result)."""
        return self.keep if self.meta_rm is not None else self.sampling.samples

    # pickling: engines hold clients, threads and models, so an engine built from a spec is
    # rebuilt from that spec on the other side (as adapters/trl.py's GRMReward does)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._engine_spec is not None:
            del state["engine"]
            return state
        try:
            pickle.dumps(self.engine)
        except Exception as e:
            raise TypeError(
                f"cannot pickle this GenerativeRewardFn: its engine {type(self.engine).__name__} "
                f"does not pickle ({type(e).__name__}: {e}). Build it from a spec instead (a URL, "
                "a model path, an engine config or GenerativeRewardFn.from_config): it then "
                "pickles as that spec and the engine is rebuilt where it is unpickled"
            ) from e
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._engine_spec is not None:
            self.engine = make_engine(self._engine_spec[0])

    # ----------------------------------------------------------------------------- public API

    def score(
        self, prompt: Conversation, responses: Sequence[str], reference: str | None = None
    ) -> JudgmentResult:
        """Judge one prompt's responses. Raises TypeError/ValueError on malformed input."""
        return run_sync(self.ascore(prompt, responses, reference))

    async def ascore(
        self,
        prompt: Conversation,
        responses: Sequence[str],
        reference: str | None = None,
        *,
        hint_best: int | None = None,
        expiry: Expiry | None = None,
    ) -> JudgmentResult:
        """Async twin of ``score``. ``hint_best`` (index of the best response) adds a hint
        naming it to every prompt: only for collecting training data (SPCT's hinted retry).
        ``expiry``: the caller's own bound (a group's, a request's); the item stops at it or at
        ``deadline.item``, whichever comes first."""
        validate_item(prompt, responses, reference)
        check_hint(hint_best, len(responses))
        expiry = Expiry.after(self.deadline.item).sooner(expiry or NEVER)
        result = await self._judge_cached(prompt, list(responses), reference, hint_best, expiry)
        return _with_votes(result, self.votes)

    def judge_messages(
        self,
        prompt: Conversation,
        responses: Sequence[str],
        order: Sequence[int],
        *,
        reference: str | None = None,
    ) -> list[dict[str, str]]:
        """The judge's chat messages for ``responses`` shown in ``order`` (``order[j]`` = index
        of the response shown j-th), built as scoring builds them (template, truncation, a fresh
        fence code): training prompts for the judge itself, e.g. SPCT's online RL.

        Example:
            >>> from grm_plugin.testing import RuleJudgeEngine
            >>> rm = GenerativeRewardFn(RuleJudgeEngine())
            >>> msgs = rm.judge_messages("Say hi", ["hi", "hello"], [1, 0])
            >>> text = msgs[1]["content"]
            >>> text.index("hello") < text.index("RESPONSE 2 BEGIN")
            True
        """
        validate_item(prompt, responses, reference)
        check_shown_order(order, responses)
        sampler = self._sampler()
        shown = sampler.fit(prompt, list(responses), reference)
        return sampler.messages(prompt, shown, tuple(order), secrets.token_hex(4), reference, None)

    def score_batch(
        self,
        prompts: Sequence[Conversation],
        responses: Sequence[Sequence[str]],
        references: Sequence[str | None] | None = None,
        *,
        progress: bool = False,
        deadline: float | None = None,
    ) -> list[JudgmentResult]:
        """Judge many items concurrently. A bad item gives a failed result, never an exception.

        Within ``deadline`` seconds (default ``self.deadline.batch``) the call returns: items not
        judged by then get a failed result of kind ``timeout``, flagged ``timeout``.
        """
        return run_sync(
            self.ascore_batch(prompts, responses, references, progress=progress, deadline=deadline)
        )

    async def ascore_batch(
        self,
        prompts: Sequence[Conversation],
        responses: Sequence[Sequence[str]],
        references: Sequence[str | None] | None = None,
        *,
        progress: bool = False,
        deadline: float | None = None,
    ) -> list[JudgmentResult]:
        """Async twin of ``score_batch``. Cancelling it cancels every item still being judged."""
        refs = check_batch(prompts, responses, references)
        batch_seconds = self.deadline.batch if deadline is None else deadline
        batch = Expiry.after(batch_seconds)
        # every item's clock starts now, also for items admitted later
        expiry = Expiry.after(self.deadline.item).sooner(batch)

        async def one(i: int) -> tuple[int, JudgmentResult]:
            return i, await self._judge_batch_item(prompts[i], responses[i], refs[i], i, expiry)

        results: list[JudgmentResult | None] = [None] * len(prompts)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="judging", unit="item")

        def landed(i: int, res: JudgmentResult) -> None:
            results[i] = _unless_batch_timeout(res, batch)
            if bar is not None:
                bar.update(1)

        # items in flight at once: enough to keep the engine busy, few enough that a large
        # batch's prompts and coroutines are not all alive at once (CPU per item stays flat:
        # the garbage collector walks every live item again and again, 40% of its full
        # collections' CPU with 1024 items in flight for an engine that runs 64 requests)
        limit = self.engine.max_in_flight
        window = 4 * limit if limit else _ITEMS_IN_FLIGHT
        try:
            await run_windowed(one, len(prompts), window, batch, landed)
        finally:
            if bar is not None:
                bar.close()
        late = sum(r is None for r in results)
        if late:
            log.warning(
                "batch deadline (%.1fs) passed: %d of %d items not judged (failed, kind timeout)",
                batch_seconds,
                late,
                len(prompts),
            )
        for i, res in enumerate(results):
            if res is None:
                results[i] = failed_result(
                    f"batch deadline ({batch_seconds:.1f}s) passed before this item was judged",
                    FailureKind.TIMEOUT,
                    responses[i],
                    flag="timeout",
                )
        return [_with_votes(r, self.votes) for r in results]  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Release the engine."""
        await self.engine.aclose()

    # ----------------------------------------------------------------------------- internals

    async def _judge_batch_item(
        self,
        prompt: Any,
        responses: Any,
        reference: Any,
        index: int,
        expiry: Expiry,
    ) -> JudgmentResult:
        """One item of a batch: its failure (bad input, engine) is its result, not a raise."""
        try:
            validate_item(prompt, responses, reference)
        except (TypeError, ValueError) as e:
            return failed_result(f"bad input: {e}", FailureKind.BAD_INPUT, responses)
        try:
            return await self._judge_cached(prompt, list(responses), reference, None, expiry)
        except PromptTooLongError as e:
            kind, message = failure_of(e)
            return failed_result(message, kind, responses)
        except asyncio.CancelledError as e:
            if cancelled_by_caller():
                raise
            # an engine's own CancelledError (e.g. its worker stopped) is its failure
            return failed_result(f"engine: cancelled: {e}", FailureKind.ENGINE, responses)
        except Exception as e:  # noqa: BLE001 - one item's failure must not sink the batch
            log.exception("judging item %d failed", index)
            kind, message = failure_of(e)
            return failed_result(message, kind, responses)

    def _item_randomness(self, item: int) -> tuple[random.Random, random.Random | None]:
        """The order generator of the judge's ``item``-th item (from 1) and, for a seeded
        judge, its seeder: the nonce (it is in the prompt) and the engine's sampling seeds come
        from a generator of their own, so that a seed reproduces the judge's text; the orders
        stay what that seed drew before."""
        seed = self.sampling.seed
        if seed is None:
            return _UNSEEDED, None
        return random.Random(seed * 1_000_003 + item - 1), random.Random(f"{seed}|{item}")

    def _sampler(self) -> Sampler:
        # per item: ``engine`` may be swapped on a built judge
        return Sampler(
            self.engine, self.sampling, self.deadline.request, self.principles, self.template
        )

    def _aggregator(self) -> Aggregator:
        return Aggregator(
            self.engine,
            self.sampling.samples,
            self.sampling.expected_scores,
            self.meta_rm,
            self.keep,
        )

    async def _judge_cached(
        self,
        prompt: Conversation,
        responses: list[str],
        reference: str | None,
        hint_best: int | None,
        expiry: Expiry,
    ) -> JudgmentResult:
        """``_judge_item`` with identical responses judged once and earlier judgments of the
        same content reused (``JudgeConfig.cache``; grm_plugin.cache)."""
        if hint_best is not None:  # a hinted judgment is training data, not a reusable score
            return await self._judge_item(prompt, responses, reference, hint_best, expiry)
        cache = self._judgment_cache
        if cache.passes_through(responses):
            return await self._judge_item(prompt, responses, reference, None, expiry)
        # per call: an edited template file is re-read by the renderer, so the key follows it
        identity = self._judgment_fingerprint() if cache.enabled else None

        async def judge(p: Conversation, distinct: list[str], ref: str | None) -> JudgmentResult:
            return await self._judge_item(p, distinct, ref, None, expiry)

        return await cache.judge(judge, prompt, responses, reference, fingerprint=identity)

    def _judgment_fingerprint(self) -> str:
        """The judge's identity in the judgment cache: everything that changes a judgment.
        The template's text is hashed (``template_digest``: read again only when its file
        changed); the rest is computed once."""
        if self._judge_identity is None:
            from . import __version__  # the parser's version: its changes change scores

            self._judge_identity = fingerprint(
                self.sampling,
                self.principles,
                self.empty_response_score,
                self.minimal_content,
                # a custom engine need not have a config: its type then stands for it
                self._engine_spec or getattr(self.engine, "config", None),
                type(self.engine).__qualname__,
                self._meta_rm_identity(),
                __version__,
            )
        return fingerprint(self._judge_identity, template_digest(self.template))

    def _meta_rm_identity(self) -> str:
        identity = meta_rm_identity(self.meta_rm)
        if identity is not None:
            return identity
        # nothing tells this meta RM's weights from another's: a token of this object, so its
        # judgments are reused by this run (and its pickled copies), never by another run
        log.warning(
            "judgment cache: the meta RM %s has no identity() method: its judgments are reused "
            "within this run only (give it identity(), e.g. a hash of its weights, to reuse "
            "them across runs from cache.path)",
            type(self.meta_rm).__qualname__,
        )
        return f"{type(self.meta_rm).__module__}.{type(self.meta_rm).__qualname__}#" + (
            secrets.token_hex(16)
        )

    async def _judge_item(
        self,
        prompt: Conversation,
        responses: list[str],
        reference: str | None,
        hint_best: int | None = None,
        expiry: Expiry = NEVER,
    ) -> JudgmentResult:
        triage = triage_responses(responses, minimal_content=self.minimal_content)
        judged = triage.judged
        if not judged:
            return nothing_judged(triage, self.empty_response_score, self.minimal_content)
        hint = judged.index(hint_best) if hint_best in judged else None
        sampler = self._sampler()
        rng, seeder = self._item_randomness(self._items_started + 1)
        nonce = item_nonce(seeder)
        # one render for the item: each order's messages fill it in (none with a hint: it
        # names a different position in every order)
        frame = None if hint is not None else sampler.frame(prompt, len(judged), reference, nonce)
        shown = sampler.fit(prompt, [responses[i] for i in judged], reference, frame)
        # counted once it fits: an item refused as too long draws nothing from the seed
        self._items_started += 1
        for j, i in enumerate(judged):
            if shown[j] is not responses[i] and shown[j] != responses[i]:
                triage.flags[i].append("truncated")
        item = ShownItem(prompt, shown, reference, responses, hint, nonce, frame)
        samples = await sampler.sample(item, expiry, rng=rng, seeder=seeder)
        unjudged = unjudged_scores(triage, self.empty_response_score)
        return await self._aggregator().result(samples, triage, unjudged, prompt, shown, expiry)
