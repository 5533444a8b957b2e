"""GenerativeRewardFn: an LLM judge's principles, critiques and scores, sampled k times, voted.

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
import itertools
import logging
import os
import pickle
import random
import secrets
import threading
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .cache import CacheConfig, JudgmentCache, fingerprint, template_digest
from .config import JudgeConfig, SamplingConfig, checked_empty_response_score
from .content import is_minimal
from .deadline import NEVER, Deadline, Expiry
from .engines import EngineSpec, JudgeEngine, make_engine
from .engines.base import EngineError, GenerationRequest
from .engines.errors import EngineTimeout, PromptTooLongError, failure_kind
from .meta_rm import MetaRewardModel, meta_rm_identity, rate_samples
from .parsing import parse_judgment
from .prompt import Conversation, build_judge_messages, check_text, fit_responses, text_problem
from .results import FailureKind, JudgmentResult, ResponseFlag, Sample
from .score_distribution import expected_in_original_order
from .templates import checked_template, load_template
from .voting import select_by_meta, vote

log = logging.getLogger(__name__)
T = TypeVar("T")

#: assumed context (tokens) when the engine does not know its own
DEFAULT_CONTEXT_WINDOW = 32768
#: all permutations are cycled through when there are at most this many (n <= 6)
_MAX_ENUMERATED_ORDERS = 720


def validate_item(prompt: Any, responses: Any, reference: Any = None) -> None:
    """Raise TypeError/ValueError with a clear message for malformed input."""
    if isinstance(prompt, str):
        pass
    elif isinstance(prompt, Sequence) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
    ):
        if not prompt:
            raise ValueError("prompt is an empty message list")
    else:
        raise TypeError(
            f"prompt must be a string or a list of {{'role', 'content'}} messages, "
            f"got {type(prompt).__name__}"
        )
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
    # a response's bad text is that response's problem only (flagged in _judge_item): in a
    # group, the other responses keep their judgment
    if reference is not None:
        check_text(reference, "the reference")


def sample_orders(n: int, k: int, rng: random.Random, shuffle: bool) -> list[tuple[int, ...]]:
    """Response orders for k samples. With few responses every order is used about equally
    often (position bias then cancels in the vote); otherwise orders are random."""
    identity = tuple(range(n))
    if not shuffle or n == 1:
        return [identity] * k
    if n <= 6 and k > 1:
        perms = list(itertools.permutations(identity))
        if len(perms) <= _MAX_ENUMERATED_ORDERS:
            rng.shuffle(perms)
            return [perms[j % len(perms)] for j in range(k)]
    return [tuple(rng.sample(identity, n)) for _ in range(k)]


async def _with_timeout(coro: Coroutine[Any, Any, T], expiry: Expiry) -> T:
    timeout = expiry.remaining()
    if timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, max(timeout, 0.0))
    except asyncio.TimeoutError:
        raise EngineTimeout(
            f"item deadline reached ({max(timeout, 0.0):.1f}s were left for this round)"
        ) from None


#: items ``ascore_batch`` judges at once at least (more when the engine runs more requests)
_ITEMS_IN_FLIGHT = 1024

#: judgments shorter than this (in all, per request) are parsed on the event loop: a thread
#: hop costs ~0.3 ms of CPU, far more than parsing a few kilobytes (benchmarks/client_floor.py)
_INLINE_PARSE_CHARS = 64_000


def _cancelled_by_caller() -> bool:
    """True when the running task itself is being cancelled (not a stray CancelledError that
    an engine raised on its own, which is that engine's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _BackgroundLoop:
    """One event loop in a daemon thread, shared by every sync call in the process, so engine
    clients, connection pools and concurrency limits are shared too (one loop per call would
    give each call its own)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            # a fork()ed child inherits the loop object but not the thread that runs it
            stale = cls._pid != os.getpid()
            if stale or cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, daemon=True, name="grm-loop").start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop

    @classmethod
    def _after_fork_in_child(cls) -> None:
        # the lock may have been held by another thread of the parent at fork time
        cls._lock = threading.Lock()
        cls._loop, cls._pid = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BackgroundLoop._after_fork_in_child)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (also from a thread with a running loop)."""
    loop = _BackgroundLoop.get()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("sync API called from grm-plugin's own event loop: use the async API")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _texts(out: Any) -> bool:
    """True for what ``generate`` must return: a list of strings (a judge server may answer
    numbers or nulls, which are its failure, not the caller's bad input)."""
    return isinstance(out, list) and all(isinstance(t, str) for t in out)


def _failed(
    error: str, kind: FailureKind, responses: Any, flag: str | None = None
) -> JudgmentResult:
    """A failed result with one (None) score and flag list per response, when they can be
    counted (a bad item may not even be a list)."""
    n = len(responses) if isinstance(responses, Sequence) and not isinstance(responses, str) else 0
    return JudgmentResult(
        scores=[None] * n,
        score_sums=[None] * n,
        failed=True,
        error=error,
        failure_kind=kind,
        flags=[[flag] if flag else [] for _ in range(n)],
    )


def failure_of(error: Exception) -> tuple[FailureKind, str]:
    """The kind and message of a failed judgment that raised ``error``: the one classification
    that ``score_batch`` and the reward server (``GroupBatcher``) both give.

    A prompt too long for the judge's context is the caller's input, not the engine's fault.

    Example:
        >>> failure_of(PromptTooLongError("the prompt alone leaves no room"))
        (<FailureKind.BAD_INPUT: 'bad_input'>, 'bad input: the prompt alone leaves no room')
        >>> failure_of(EngineError("connection refused"))[0].value
        'engine'
    """
    kind = failure_kind(error)
    if kind is FailureKind.BAD_INPUT:
        return kind, f"bad input: {error}"
    return kind, f"{type(error).__name__}: {error}"


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


def item_failure_kind(samples: Sequence[Sample]) -> FailureKind:
    """The kind that explains an item with no valid sample: a timeout, else an engine failure,
    else a parse failure (the first cause that, if fixed, could have given a score)."""
    kinds = {s.failure_kind for s in samples}
    for kind in (FailureKind.TIMEOUT, FailureKind.ENGINE, FailureKind.PARSE):
        if kind in kinds:
            return kind
    return FailureKind.ENGINE


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
    ) -> None:
        sampling = SamplingConfig(
            samples=samples,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            shuffle=shuffle,
            parse_retries=parse_retries,
            keep=keep,
            seed=seed,
            expected_scores=expected_scores,
        )
        self._setup(sampling, meta_rm, principles, empty_response_score, deadline)
        self.minimal_content = minimal_content
        self.template = checked_template(template)
        # a spec (URL, path, config, None) is kept so that the object pickles as its config
        self._engine_spec = None if isinstance(engine, JudgeEngine) else (engine,)
        self.engine: JudgeEngine = make_engine(engine)
        self._check_engine()

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
        if isinstance(config, (str, Path)):
            config = JudgeConfig.load(config)
        elif isinstance(config, dict):
            config = JudgeConfig.model_validate(config)
        self = cls.__new__(cls)
        self._setup(
            config.sampling,
            meta_rm,
            config.principles,
            config.empty_response_score,
            config.deadline,
        )
        self.template = checked_template(config.template)
        self.minimal_content = config.minimal_content
        self.cache_config = config.cache
        self._engine_spec = (config.engine,) if engine is None else None
        self.engine = engine if engine is not None else make_engine(config.engine)
        self._check_engine()
        self._judgment_cache = self._new_judgment_cache()
        return self

    def _check_engine(self) -> None:
        if self.sampling.expected_scores and not self.engine.supports_score_distributions:
            raise ValueError(
                f"expected_scores needs an engine that gives score distributions (the "
                f"transformers engine in float32 or bfloat16): {type(self.engine).__name__} "
                f"does not: {self.engine.score_distributions_refusal}"
            )

    def _setup(
        self,
        sampling: SamplingConfig,
        meta_rm: MetaRewardModel | None,
        principles: str | None,
        empty_response_score: float | None,
        deadline: Deadline | Mapping[str, float | None] | None = None,
    ) -> None:
        if meta_rm is not None and not isinstance(meta_rm, MetaRewardModel):
            raise TypeError("meta_rm must have a score_judgments(prompt, shown, judgments) method")
        self.deadline = (
            deadline if isinstance(deadline, Deadline) else Deadline.model_validate(deadline or {})
        )
        self.sampling = sampling
        self.meta_rm = meta_rm
        self.principles = principles
        self.empty_response_score = checked_empty_response_score(empty_response_score)
        self._items_started = 0  # an int, not itertools.count: it pickles everywhere

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
    ) -> JudgmentResult:
        """Async twin of ``score``. ``hint_best`` (index of the best response) adds a hint
        naming it to every prompt: only for collecting training data (SPCT's hinted retry)."""
        validate_item(prompt, responses, reference)
        if hint_best is not None and not 0 <= hint_best < len(responses):
            raise ValueError(f"hint_best={hint_best} but there are {len(responses)} responses")
        expiry = Expiry.after(self.deadline.item)
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
        if sorted(order) != list(range(len(responses))):
            raise ValueError(f"order {list(order)} is not a permutation of {len(responses)}")
        if any(not r.strip() for r in responses):
            raise ValueError("empty responses are never shown to the judge")
        shown = self._fit(prompt, list(responses), reference)
        return self._order_messages(
            prompt, shown, tuple(order), secrets.token_hex(4), reference, None
        )

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
        for name, value in (("prompts", prompts), ("responses", responses)):
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise TypeError(f"{name} must be a list (one entry per item), got {value!r:.40}")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        if references is None:
            references = [None] * len(prompts)
        elif isinstance(references, str) or not isinstance(references, Sequence):
            # a bare string would otherwise give each item one of its characters
            raise TypeError(
                "references must be a list (one reference or None per item), "
                f"got {references!r:.40}"
            )
        elif len(references) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
        batch_seconds = self.deadline.batch if deadline is None else deadline
        batch = Expiry.after(batch_seconds)
        # every item's clock starts now, also for items admitted later (below)
        expiry = Expiry.after(self.deadline.item).sooner(batch)

        async def one(i: int) -> tuple[int, JudgmentResult]:
            try:
                validate_item(prompts[i], responses[i], references[i])
            except (TypeError, ValueError) as e:
                return i, _failed(f"bad input: {e}", FailureKind.BAD_INPUT, responses[i])
            try:
                judged = await self._judge_cached(
                    prompts[i], list(responses[i]), references[i], None, expiry
                )
                return i, judged
            except PromptTooLongError as e:
                kind, message = failure_of(e)
                return i, _failed(message, kind, responses[i])
            except asyncio.CancelledError as e:
                if _cancelled_by_caller():
                    raise
                # an engine's own CancelledError (e.g. its worker stopped) is its failure
                return i, _failed(f"engine: cancelled: {e}", FailureKind.ENGINE, responses[i])
            except Exception as e:  # noqa: BLE001 - one item's failure must not sink the batch
                log.exception("judging item %d failed", i)
                kind, message = failure_of(e)
                return i, _failed(message, kind, responses[i])

        results: list[JudgmentResult | None] = [None] * len(prompts)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="judging", unit="item")
        # items in flight at once: enough to keep any engine busy, few enough that a large
        # batch's prompts and coroutines are not all alive at once (CPU per item stays flat)
        window = max(_ITEMS_IN_FLIGHT, 4 * (self.engine.max_in_flight or 0))
        running: set[asyncio.Task] = set()
        landed: asyncio.Queue[asyncio.Task] = asyncio.Queue()
        admitted = 0

        def admit() -> None:
            nonlocal admitted
            task = asyncio.ensure_future(one(admitted))
            admitted += 1
            running.add(task)
            task.add_done_callback(landed.put_nowait)

        async def collect() -> None:
            # one callback per item and one timeout per batch: a loop of asyncio.wait
            # (FIRST_COMPLETED) re-registered one on every pending task per wake-up (quadratic)
            while admitted < len(prompts) and len(running) < window:
                admit()
            for _ in range(len(prompts)):
                task = await landed.get()
                running.discard(task)
                i, res = task.result()
                results[i] = _unless_batch_timeout(res, batch)
                if bar is not None:
                    bar.update(1)
                if admitted < len(prompts):
                    admit()

        try:
            left = batch.remaining()
            if left is None:
                await collect()
            else:
                await asyncio.wait_for(collect(), max(left, 0.0))
        except asyncio.TimeoutError:
            pass  # the batch deadline: what was not judged by now is a timeout (below)
        finally:
            # on the batch deadline, and when the caller cancels us: nothing keeps judging
            for task in running:
                task.cancel()
            if bar is not None:
                bar.close()
        while not landed.empty():  # finished as the deadline struck, before it was collected
            task = landed.get_nowait()
            if not task.cancelled() and task.exception() is None:
                i, res = task.result()
                results[i] = _unless_batch_timeout(res, batch)
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
                results[i] = _failed(
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

    def _rng(self) -> random.Random:
        seed = self.sampling.seed
        self._items_started += 1
        if seed is None:
            return random.Random()
        return random.Random(seed * 1_000_003 + self._items_started - 1)

    def _fit(self, prompt: Conversation, responses: list[str], reference: str | None) -> list[str]:
        """Truncate responses so that prompt + judgment fit the engine's context."""
        window = self.engine.context_window or DEFAULT_CONTEXT_WINDOW
        skeleton = build_judge_messages(
            prompt,
            [""] * len(responses),
            nonce="x" * 8,
            principles=self.principles,
            reference=reference,
            template=self.template,
        )
        overhead = sum(self.engine.count_tokens(m["content"]) for m in skeleton) + 64
        budget = window - self.sampling.max_new_tokens - overhead
        joined = "".join(responses)
        tokens = self.engine.count_tokens(joined)
        if tokens <= budget:
            return responses
        if budget <= 0:
            raise PromptTooLongError(
                f"the prompt alone (~{overhead} tokens) leaves no room for the responses in a "
                f"{window}-token context with {self.sampling.max_new_tokens} new tokens"
            )
        chars_per_token = len(joined) / max(tokens, 1)
        # 0.95: token counts of a cut text are not exactly proportional to its length
        return fit_responses(responses, int(budget * chars_per_token * 0.95))

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
        cache = self.__dict__.get("_judgment_cache")
        if cache is None:  # built with __init__ (no cache config), or pickled before it existed
            cache = self._judgment_cache = self._new_judgment_cache()
        # per call: an edited template file is re-read by the renderer, so the key follows it
        identity = self._judgment_fingerprint() if cache.enabled else None

        async def judge(p: Conversation, distinct: list[str], ref: str | None) -> JudgmentResult:
            return await self._judge_item(p, distinct, ref, None, expiry)

        return await cache.judge(judge, prompt, responses, reference, fingerprint=identity)

    def _new_judgment_cache(self) -> JudgmentCache:
        """The judgment cache of ``cache_config``; opens its store now, so that a store that
        cannot be used fails when the reward is built (``CacheStoreError`` names the file)."""
        config = getattr(self, "cache_config", None) or CacheConfig()
        return JudgmentCache(config, self._judgment_fingerprint() if config.max_items else "")

    def _judgment_fingerprint(self) -> str:
        """The judge's identity in the judgment cache: everything that changes a judgment.
        The template's text is hashed (``template_digest``: read again only when its file
        changed); the rest is computed once."""
        fixed = self.__dict__.get("_judge_identity")
        if fixed is None:
            from . import __version__  # the parser's version: its changes change scores

            fixed = self._judge_identity = fingerprint(
                self.sampling,
                self.principles,
                self.empty_response_score,
                getattr(self, "minimal_content", False),
                getattr(self, "_engine_spec", None) or getattr(self.engine, "config", None),
                type(self.engine).__qualname__,
                self._meta_rm_identity(),
                __version__,
            )
        return fingerprint(fixed, template_digest(self.template))

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
        n_all = len(responses)
        flags: list[list[str]] = [[] for _ in range(n_all)]
        minimal = getattr(self, "minimal_content", False)  # objects pickled before it existed
        judged = []
        invalid: dict[int, str] = {}
        for i, r in enumerate(responses):
            if not r.strip():
                flags[i].append(ResponseFlag.EMPTY_RESPONSE.value)
            elif (bad := text_problem(r, f"response {i}")) is not None:
                flags[i].append(ResponseFlag.INVALID_TEXT.value)
                invalid[i] = bad
            elif minimal and is_minimal(r):
                flags[i].append(ResponseFlag.MINIMAL_CONTENT.value)
            else:
                judged.append(i)
        empty_score = self.empty_response_score
        # responses the judge never saw: the empty value, or no score for text it cannot carry
        unjudged = [None if i in invalid else empty_score for i in range(n_all)]
        if not judged:
            if invalid:
                return JudgmentResult(
                    scores=unjudged,
                    score_sums=[None] * n_all,
                    failed=True,
                    error="; ".join(invalid.values()),
                    failure_kind=FailureKind.BAD_INPUT,
                    flags=flags,
                )
            return JudgmentResult(
                scores=unjudged,
                score_sums=[None] * n_all,
                failed=empty_score is None,
                error="all responses are empty" + (" or have no content" if minimal else ""),
                failure_kind=FailureKind.EMPTY if empty_score is None else None,
                flags=flags,
            )

        shown_texts = self._fit(prompt, [responses[i] for i in judged], reference)
        for j, i in enumerate(judged):
            if shown_texts[j] is not responses[i] and shown_texts[j] != responses[i]:
                flags[i].append("truncated")

        hint = judged.index(hint_best) if hint_best in judged else None
        samples = await self._sample(prompt, shown_texts, reference, responses, hint, expiry)
        valid = [s for s in samples if s.scores is not None]
        if self.sampling.expected_scores:
            await self._add_expected_scores(valid, expiry)
        if not valid:
            reasons = sorted({s.failure or "" for s in samples})
            return JudgmentResult(
                scores=[unjudged[i] if i not in judged else None for i in range(n_all)],
                score_sums=[None] * n_all,
                samples=samples,
                failed=True,
                error="no valid judgment: " + "; ".join(reasons),
                failure_kind=item_failure_kind(samples),
                flags=flags,
            )

        if len(valid) < self.sampling.samples:
            # fewer votes than asked for: flagged, so that the cache does not keep it as a
            # complete judgment and callers can tell (grm_plugin.cache)
            for i in judged:
                flags[i].append(ResponseFlag.DEGRADED.value)
        voters = valid
        if self.meta_rm is not None:
            voters = await self._meta_filter(prompt, shown_texts, valid)
        for s in voters:
            s.voted = True
        mean, sums = vote([s.vote_scores() for s in voters], len(judged))  # type: ignore[misc]
        scores: list[float | None] = list(unjudged)
        score_sums: list[float | None] = [None] * n_all
        for j, i in enumerate(judged):
            scores[i], score_sums[i] = mean[j], sums[j]
        return JudgmentResult(
            scores=scores,
            score_sums=score_sums,
            num_valid=len(valid),
            num_voted=len(voters),
            samples=samples,
            flags=flags,
        )

    async def _sample(
        self,
        prompt: Conversation,
        shown_texts: list[str],
        reference: str | None,
        originals: list[str],
        hint_best: int | None = None,
        expiry: Expiry = NEVER,
    ) -> list[Sample]:
        """Draw k samples; re-sample parse failures up to ``parse_retries`` rounds, all within
        one ``expiry`` (the item's deadline, or its batch's if sooner)."""
        cfg = self.sampling
        rng = self._rng()
        # seeded: the nonce (it is in the prompt) and the engine's sampling seeds come from a
        # generator of their own, so that a seed reproduces the judge's text; the response
        # orders stay what that seed drew before
        seeder = None if cfg.seed is None else random.Random(f"{cfg.seed}|{self._items_started}")
        n = len(shown_texts)
        nonce = secrets.token_hex(4) if seeder is None else f"{seeder.getrandbits(32):08x}"
        samples: list[Sample] = []
        missing = cfg.samples
        for attempt in range(cfg.parse_retries + 1):
            if attempt > 0 and expiry.passed():
                break  # no time left for another round: what failed stays failed
            temperature = cfg.temperature if cfg.samples > 1 else 0.0
            if attempt > 0 and temperature == 0.0:
                temperature = cfg.retry_temperature  # greedy would repeat the same failure
            orders = sample_orders(n, missing, rng, cfg.shuffle)
            new = await self._run_orders(
                prompt,
                shown_texts,
                reference,
                orders,
                nonce,
                temperature,
                attempt,
                originals,
                expiry,
                hint_best,
                seeder=seeder,
            )
            if self.engine.score_prefill:
                new = await self._prefill_score_lines(
                    new,
                    prompt,
                    shown_texts,
                    reference,
                    nonce,
                    originals,
                    expiry,
                    hint_best,
                    seeder=seeder,
                )
            samples += new
            parse_failures = sum(1 for s in new if s.failure_kind is FailureKind.PARSE)
            # engine failures are not retried here: the engine already retried within its deadline
            missing = parse_failures
            if missing == 0:
                break
        return samples

    async def _run_orders(
        self,
        prompt: Conversation,
        shown_texts: list[str],
        reference: str | None,
        orders: list[tuple[int, ...]],
        nonce: str,
        temperature: float,
        attempt: int,
        originals: list[str],
        expiry: Expiry = NEVER,
        hint_best: int | None = None,
        *,
        seeder: random.Random | None = None,
    ) -> list[Sample]:
        # one request per distinct order, n = how many samples use it: shares the prompt prefix
        groups: dict[tuple[int, ...], int] = {}
        for o in orders:
            groups[o] = groups.get(o, 0) + 1
        requests = []
        for order, count in groups.items():
            messages = self._order_messages(prompt, shown_texts, order, nonce, reference, hint_best)
            requests.append(
                GenerationRequest(
                    messages,
                    n=count,
                    temperature=temperature,
                    max_tokens=self.sampling.max_new_tokens,
                    seed=None if seeder is None else seeder.getrandbits(31),
                    request_timeout=self.deadline.request,
                    expiry=expiry,
                )
            )
        # the engine gets the expiry (to bound its tries); _generate guards engines that ignore it
        outputs: list[Any]
        if len(requests) == 1:  # k = 1, or k samples of one order: gather would cost a task
            try:
                outputs = [await self._generate(requests[0], expiry)]
            except (Exception, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError) and _cancelled_by_caller():
                    raise
                outputs = [e]
        else:
            outputs = await asyncio.gather(
                *(self._generate(r, expiry) for r in requests),
                return_exceptions=True,
            )
        by_order: dict[tuple[int, ...], list[Sample]] = {}
        for (order, count), out, request in zip(groups.items(), outputs, requests, strict=True):
            if isinstance(out, asyncio.CancelledError) and not _cancelled_by_caller():
                # gather returned, so we were not cancelled: the engine raised it on its own
                out = EngineError(f"the engine's request was cancelled ({out or 'no reason'})")
            if not isinstance(out, BaseException) and not _texts(out):
                out = EngineError(
                    f"the engine returned {type(out).__name__} {str(out)[:80]!r}, not a list "
                    "of strings"
                )
            if isinstance(out, BaseException):
                if not isinstance(out, Exception):
                    raise out
                kind = failure_kind(out)
                failure = f"{kind.value}: {type(out).__name__}: {out}"
                by_order[order] = [
                    Sample(order=list(order), attempt=attempt, failure=failure, failure_kind=kind)
                    for _ in range(count)
                ]
            else:
                parse_args = (out[:count], order, attempt, originals, shown_texts, nonce)
                if sum(map(len, out[:count])) <= _INLINE_PARSE_CHARS:
                    by_order[order] = self._parse_samples(*parse_args)
                else:
                    # a thread, as the server decodes bodies in one: parsing is linear, a long
                    # text takes a while, and the loop serves every other item meanwhile
                    by_order[order] = await asyncio.to_thread(self._parse_samples, *parse_args)
                if expiry.passed():
                    # a local engine stops writing at the expiry and returns what it has, which
                    # can beat the timeout guard above by a hair: a text cut short by the
                    # deadline is a timeout, not the judge's failure to write a score line
                    for s in by_order[order]:
                        if s.failure_kind is FailureKind.PARSE:
                            s.failure = "timeout: the deadline passed while the judge was writing"
                            s.failure_kind = FailureKind.TIMEOUT
                # a custom engine that returns too few texts costs those samples, not the item
                short = f"engine: returned {len(out)} texts for n={count}"
                by_order[order] += [
                    Sample(
                        order=list(order),
                        attempt=attempt,
                        failure=short,
                        failure_kind=FailureKind.ENGINE,
                    )
                    for _ in range(count - len(out))
                ]
            for s in by_order[order]:
                s.messages = request.messages
        # back in the order the orders were drawn, so that the first j samples are what k = j
        # would have drawn (evaluation subsamples one draw for every k)
        return [by_order[o].pop(0) for o in orders]

    async def _prefill_score_lines(
        self,
        samples: list[Sample],
        prompt: Conversation,
        shown_texts: list[str],
        reference: str | None,
        nonce: str,
        originals: list[str],
        expiry: Expiry,
        hint_best: int | None,
        *,
        seeder: random.Random | None = None,
    ) -> list[Sample]:
        """Continue each sample that ended without a parsable score line from its own text plus
        the start of the template's score line (``Final Scores: [[`` or ``\\boxed{``: a few
        tokens, small judges then write the numbers) rather than re-sampling the whole judgment;
        a sample this does not fix stays a parse failure."""
        todo = [i for i, s in enumerate(samples) if s.failure_kind is FailureKind.PARSE and s.text]
        if not todo or not self.engine.supports_assistant_prefix:
            return samples
        # the template asked for this format: a prefill in another one contradicts the prompt
        line_start = load_template(self.template).score_format.line_start
        requests = [
            GenerationRequest(
                self._order_messages(
                    prompt, shown_texts, tuple(samples[i].order), nonce, reference, hint_best
                ),
                n=1,
                max_tokens=8 + 4 * len(shown_texts),
                assistant_prefix=(samples[i].text or "").rstrip() + "\n\n" + line_start,
                seed=None if seeder is None else seeder.getrandbits(31),
                request_timeout=self.deadline.request,
                expiry=expiry,
            )
            for i in todo
        ]
        outputs = await asyncio.gather(
            *(self._generate(r, expiry) for r in requests),
            return_exceptions=True,
        )
        fixed = list(samples)
        for i, request, out in zip(todo, requests, outputs, strict=True):
            if isinstance(out, BaseException) and not isinstance(out, Exception):
                raise out
            if isinstance(out, BaseException) or not _texts(out) or not out:
                continue  # the original parse failure stands
            old = samples[i]
            (new,) = await asyncio.to_thread(
                self._parse_samples,
                [(request.assistant_prefix or "") + out[0]],
                tuple(old.order),
                old.attempt,
                originals,
                shown_texts,
                nonce,
            )
            if new.scores is not None:
                new.messages = old.messages
                fixed[i] = new
        return fixed

    async def _add_expected_scores(self, valid: list[Sample], expiry: Expiry) -> None:
        """Set ``expected_scores`` on each valid sample; a sample whose distributions could not
        be read (deadline, engine error) keeps voting with its parsed scores."""

        async def one(s: Sample) -> None:
            if s.messages is None or s.text is None or s.score_starts is None:
                return
            dists = await _with_timeout(
                self.engine.score_distributions(s.messages, s.text, s.score_starts), expiry
            )
            s.expected_scores = expected_in_original_order(dists, s.order)

        outs = await asyncio.gather(*(one(s) for s in valid), return_exceptions=True)
        for out in outs:
            if isinstance(out, BaseException) and not isinstance(out, Exception):
                raise out
            if isinstance(out, Exception):
                log.warning("expected scores not measured (parsed scores vote): %r", out)

    def _generate(
        self, request: GenerationRequest, expiry: Expiry
    ) -> Coroutine[Any, Any, list[str]]:
        """The engine's texts for ``request``, bounded by ``expiry`` here only when the engine
        does not bound itself (``honours_expiry``): one timeout per request, not two."""
        coro = self.engine.generate(request)
        return coro if self.engine.honours_expiry else _with_timeout(coro, expiry)

    def _order_messages(
        self,
        prompt: Conversation,
        shown_texts: list[str],
        order: tuple[int, ...],
        nonce: str,
        reference: str | None,
        hint_best: int | None,
    ) -> list[dict[str, str]]:
        return build_judge_messages(
            prompt,
            [shown_texts[i] for i in order],
            nonce=nonce,
            principles=self.principles,
            reference=reference,
            hint_best=None if hint_best is None else order.index(hint_best),
            template=self.template,
        )

    @classmethod
    def _parse_samples(
        cls,
        texts: list[str],
        order: tuple[int, ...],
        attempt: int,
        originals: list[str],
        shown_texts: list[str],
        nonce: str,
    ) -> list[Sample]:
        return [cls._parse_sample(t, order, attempt, originals, shown_texts, nonce) for t in texts]

    @staticmethod
    def _parse_sample(
        text: str,
        order: tuple[int, ...],
        attempt: int,
        originals: list[str],
        shown_texts: list[str],
        nonce: str | None = None,
    ) -> Sample:
        parsed = parse_judgment(
            text, len(order), quoted=[*originals, *shown_texts], fence_code=nonce
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

    async def _meta_filter(
        self, prompt: Conversation, shown_texts: list[str], valid: list[Sample]
    ) -> list[Sample]:
        assert self.meta_rm is not None
        meta = await asyncio.to_thread(rate_samples, self.meta_rm, prompt, shown_texts, valid)
        return [valid[i] for i in select_by_meta(meta, min(self.keep, len(valid)))]
