"""No judgment paid twice: identical responses of an item are judged once, and a content-hash
cache returns earlier judgments of the same (prompt, response set, reference, judge config).

``GenerativeRewardFn`` calls ``JudgmentCache.judge`` for every item (configured by
``JudgeConfig.cache``, a ``CacheConfig``):

- **Dedup**: responses with the same text are sent to the judge once; their copies get the same
  score and the flag ``"duplicate"``. When copies were removed, ``JudgmentResult.samples`` (the
  judge's raw samples) index the distinct responses, in first-occurrence order.
- **Cache**: the key is a SHA-256 of the prompt, the *set* of distinct responses (order does not
  matter: it is shuffled for the judge anyway), the reference and the judge's fingerprint
  (sampling settings, principles, engine config, meta RM class). A hit is mapped back to the
  caller's order and every response is flagged ``"cached"``. Only complete judgments are stored
  (a failure is retried next time). On disk the judge's raw samples are not kept (a hit from
  disk has scores, no critiques). In memory: a size-bounded LRU (``max_items``). On disk
  (``path``, SQLite): the same entries survive a restart, for resumed runs of the same judge.
- An item whose content is being judged right now (two identical items of one batch) waits
  for that judgment instead of starting a second one.
- Hits, misses and stores are counted (``stats()``) and logged at INFO every ``log_every``
  lookups.

Example:
    >>> import asyncio
    >>> from grm_plugin.results import JudgmentResult
    >>> calls = []
    >>> async def judge(prompt, responses, reference):
    ...     calls.append(list(responses))
    ...     return JudgmentResult(scores=[float(len(r)) for r in responses],
    ...                           flags=[[] for _ in responses], num_valid=1)
    >>> cache = JudgmentCache(CacheConfig(max_items=100), fingerprint="judge-1")
    >>> asyncio.run(cache.judge(judge, "Q?", ["ab", "abc", "ab"], None)).scores
    [2.0, 3.0, 2.0]
    >>> asyncio.run(cache.judge(judge, "Q?", ["abc", "ab"], None)).flags
    [['cached'], ['cached']]
    >>> calls, cache.stats()["hits"]
    ([['ab', 'abc']], 1)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .results import JudgmentResult

log = logging.getLogger(__name__)

__all__ = [
    "CACHED_FLAG",
    "DUPLICATE_FLAG",
    "TRAINING_CACHE",
    "CacheConfig",
    "JudgmentCache",
    "cache_key",
    "fingerprint",
]

#: flag of a response whose text already occurred earlier in the same item
DUPLICATE_FLAG = "duplicate"
#: flag of every response of an item answered from the cache
CACHED_FLAG = "cached"

JudgeFn = Callable[[Any, list[str], "str | None"], Awaitable[JudgmentResult]]


class CacheConfig(BaseModel):
    """Dedup and judgment cache settings (``JudgeConfig.cache``).

    The memory cache is off by default in the core (a repeated call judges again, as scripts,
    evaluations and load tests expect) and on (``TRAINING_CACHE``) in the trl and verl adapters
    unless the judge config sets ``cache`` itself: in RL training the same prompt and response
    set recur (later epochs, converged short answers) and a fresh judgment only adds noise.
    """

    model_config = ConfigDict(extra="forbid")

    dedup: bool = Field(True, description="judge identical responses of an item once")
    max_items: int = Field(
        0, ge=0, description="judgments kept in memory (LRU); 0 turns the cache off"
    )
    path: str | None = Field(
        None, description="SQLite file that keeps judgments across restarts (resumed runs)"
    )
    log_every: int = Field(1000, ge=1, description="lookups between INFO lines with the counts")


#: what the training adapters use when the judge config does not set ``cache``
TRAINING_CACHE = CacheConfig(max_items=4096)


def with_training_cache(config: Any) -> Any:
    """``config`` (a JudgeConfig) with ``TRAINING_CACHE`` unless it sets ``cache`` itself."""
    if "cache" in config.model_fields_set:
        return config
    return config.model_copy(update={"cache": TRAINING_CACHE})


def cache_key(
    prompt: Any, responses: Sequence[str], reference: str | None, fingerprint: str
) -> str:
    """SHA-256 of the item's content; the responses count as a set.

    >>> cache_key("Q", ["a", "b"], None, "f") == cache_key("Q", ["b", "a"], None, "f")
    True
    """
    body = json.dumps(
        [prompt, sorted(set(responses)), reference, fingerprint],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _reindex(
    result: JudgmentResult, index: Sequence[int], extra_flags: Sequence[list[str]]
) -> JudgmentResult:
    """``result`` with response i taken from ``index[i]`` of the original, flags appended."""

    def pick(values: list[Any], i: int) -> Any:
        return values[index[i]] if index[i] < len(values) else None

    n = len(index)
    return result.model_copy(
        update={
            "scores": [pick(result.scores, i) for i in range(n)],
            "score_sums": [pick(result.score_sums, i) for i in range(n)],
            "flags": [[*(pick(result.flags, i) or []), *extra_flags[i]] for i in range(n)],
        }
    )


def _permuted_samples(result: JudgmentResult, perm: Sequence[int]) -> list[Any]:
    """The samples of ``result`` (responses in stored order) for responses in the order where
    response i is stored response ``perm[i]``."""
    new_of_old = {old: new for new, old in enumerate(perm)}
    out = []
    for s in result.samples:
        update: dict[str, Any] = {"order": [new_of_old[o] for o in s.order if o in new_of_old]}
        if s.scores is not None:
            update["scores"] = [s.scores[perm[i]] for i in range(len(perm))]
        out.append(s.model_copy(update=update))
    return out


class _Disk:
    """The SQLite store: key -> [texts, result JSON]."""

    def __init__(self, path: str) -> None:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(Path(path).expanduser()), check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )

    def get(self, key: str) -> tuple[list[str], JudgmentResult] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM judgments WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            texts, result = json.loads(row[0])
            return list(texts), JudgmentResult.model_validate(result)
        except (ValueError, TypeError) as e:  # a damaged row is a miss, not an error
            log.warning("judgment cache: unreadable entry %s (%s): judging again", key[:12], e)
            return None

    def put(self, key: str, texts: list[str], result: JudgmentResult) -> None:
        value = json.dumps([texts, result.model_dump(mode="json", exclude={"samples"})])
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?)", (key, value))


class JudgmentCache:
    """Dedup + content-hash cache around a judge function (see the module docstring).

    Args:
        config: the ``CacheConfig``.
        fingerprint: identifies the judge (its settings); part of every key.
    """

    def __init__(self, config: CacheConfig, fingerprint: str) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self._memory: OrderedDict[str, tuple[list[str], JudgmentResult]] = OrderedDict()
        self._lock = threading.Lock()
        self._disk = _Disk(config.path) if config.path and config.max_items > 0 else None
        self._counts = {"hits": 0, "misses": 0, "stored": 0, "duplicates": 0, "shared": 0}
        self._inflight: dict[str, asyncio.Future[tuple[list[str], JudgmentResult] | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # locks and database handles do not pickle: the copy starts empty (memory) or reopens
        return {"config": self.config, "fingerprint": self.fingerprint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["fingerprint"])  # type: ignore[misc]

    @property
    def enabled(self) -> bool:
        """Whether judgments are looked up and stored (``max_items > 0``)."""
        return self.config.max_items > 0

    def stats(self) -> dict[str, int]:
        """Counts since start: ``hits``, ``misses``, ``stored``, ``duplicates`` (responses not
        sent because an identical one was in the same item), ``shared`` (misses answered by an
        identical judgment that was already running), ``size`` (in memory)."""
        with self._lock:
            return {**self._counts, "size": len(self._memory)}

    def _lookup(self, key: str) -> tuple[list[str], JudgmentResult] | None:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
        if hit is None and self._disk is not None:
            hit = self._disk.get(key)
            if hit is not None:
                self._remember(key, hit)
        with self._lock:
            self._counts["hits" if hit is not None else "misses"] += 1
            lookups = self._counts["hits"] + self._counts["misses"]
            counts = dict(self._counts)
        if lookups % self.config.log_every == 0:
            log.info("judgment cache: %s", counts)
        return hit

    def _remember(self, key: str, entry: tuple[list[str], JudgmentResult]) -> None:
        with self._lock:
            self._memory[key] = entry
            self._memory.move_to_end(key)
            while len(self._memory) > self.config.max_items:
                self._memory.popitem(last=False)

    def _store(self, key: str, texts: list[str], result: JudgmentResult) -> None:
        self._remember(key, (texts, result))
        if self._disk is not None:
            try:
                self._disk.put(key, texts, result)
            except sqlite3.Error as e:  # a full disk must not fail the judgment
                log.warning("judgment cache: could not write to %s: %s", self.config.path, e)
        with self._lock:
            self._counts["stored"] += 1

    async def judge(
        self, judge: JudgeFn, prompt: Any, responses: Sequence[str], reference: str | None
    ) -> JudgmentResult:
        """``await judge(prompt, distinct_responses, reference)`` unless the cache has it;
        the result is for ``responses`` as given (copies and order restored, flagged)."""
        responses = list(responses)
        distinct: list[str] = list(dict.fromkeys(responses)) if self.config.dedup else responses
        position = {text: j for j, text in enumerate(distinct)}
        seen: set[str] = set()
        copies: list[list[str]] = []
        for r in responses:
            copies.append([DUPLICATE_FLAG] if r in seen and self.config.dedup else [])
            seen.add(r)
        n_copies = sum(1 for c in copies if c)
        if n_copies:
            with self._lock:
                self._counts["duplicates"] += n_copies

        key = cache_key(prompt, distinct, reference, self.fingerprint) if self.enabled else None
        hit = self._lookup(key) if key is not None else None
        running = self._inflight.get(key) if key is not None and hit is None else None
        if running is not None and running.get_loop() is asyncio.get_running_loop():
            # the same content is being judged right now (e.g. two identical items of one
            # batch): wait for that judgment instead of paying for a second one
            hit = await asyncio.shield(running)
            if hit is not None:
                with self._lock:
                    self._counts["shared"] += 1
        if hit is not None:
            stored_texts, stored = hit
            at = {t: j for j, t in enumerate(stored_texts)}
            if set(at) == set(distinct):
                perm = [at[t] for t in distinct]
                result = stored.model_copy(update={"samples": _permuted_samples(stored, perm)})
                result = _reindex(result, perm, [[] for _ in distinct])
                index = [position[r] for r in responses]
                return _reindex(result, index, [[*c, CACHED_FLAG] for c in copies])
        done: asyncio.Future[tuple[list[str], JudgmentResult] | None] | None = None
        if key is not None and key not in self._inflight:
            done = asyncio.get_running_loop().create_future()
            self._inflight[key] = done
        entry: tuple[list[str], JudgmentResult] | None = None
        try:
            result = await judge(prompt, distinct, reference)
            if key is not None and not result.failed and all(s is not None for s in result.scores):
                entry = (distinct, result)
                self._store(key, distinct, result)
        finally:
            if done is not None:
                self._inflight.pop(key, None)  # type: ignore[arg-type]
                done.set_result(entry)  # a failure (None): the waiters judge for themselves
        if not n_copies:
            return result
        return _reindex(result, [position[r] for r in responses], copies)


def fingerprint(*parts: Any) -> str:
    """A stable text for the judge's identity (pydantic models as JSON, others as repr).

    >>> fingerprint({"samples": 4}, "Rule") == fingerprint({"samples": 4}, "Rule")
    True
    """
    out = []
    for p in parts:
        if isinstance(p, BaseModel):
            out.append(p.model_dump_json())
        else:
            out.append(json.dumps(p, sort_keys=True, default=repr))
    return hashlib.sha256("\x1f".join(out).encode("utf-8")).hexdigest()
