"""No judgment paid twice: identical responses of an item are judged once, and a content-hash
cache returns earlier judgments of the same (prompt, response set, reference, judge config).

``GenerativeRewardFn`` calls ``JudgmentCache.judge`` for every item (configured by
``JudgeConfig.cache``, a ``CacheConfig``):

- **Dedup**: responses with the same text are sent to the judge once; their copies get the same
  score and the flag ``"duplicate"``. When copies were removed, ``JudgmentResult.samples`` (the
  judge's raw samples) index the distinct responses, in first-occurrence order.
- **Cache**: the key is a SHA-256 of the prompt, the *set* of distinct responses (order does not
  matter: it is shuffled for the judge anyway), the reference and the judge's fingerprint:
  everything that changes a judgment (sampling settings, principles, the template's *text*
  (``template_digest``), the engine's config (its model), the meta RM's weights
  (``MetaRewardModel`` ``identity()``), the grm-plugin version (the parser)). A hit is mapped
  back to the caller's order and every response is flagged ``"cached"``. Only complete
  judgments are stored: a failure, and a *degraded* judgment (fewer valid samples than asked
  for, flagged ``ResponseFlag.DEGRADED``), are judged again next time. On disk the judge's raw
  samples are not kept (a hit from disk has scores, no critiques). In memory: a size-bounded
  LRU (``max_items``). On disk (``path``, SQLite, schema version ``SCHEMA_VERSION`` in
  ``PRAGMA user_version``): the same entries survive a restart, for resumed runs of the same
  judge. A store that cannot be opened, is not SQLite, or has another schema version raises
  ``CacheStoreError`` (naming the file) when the cache is built, i.e. when the reward is
  built; a store that breaks later is a miss, with one warning naming the file.
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
import functools
import hashlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .results import JudgmentResult, ResponseFlag

log = logging.getLogger(__name__)

__all__ = [
    "CACHED_FLAG",
    "DUPLICATE_FLAG",
    "SCHEMA_VERSION",
    "TRAINING_CACHE",
    "CacheConfig",
    "CacheStoreError",
    "JudgmentCache",
    "cache_key",
    "fingerprint",
    "is_degraded",
    "template_digest",
]

# ``JudgmentResult.flags`` holds the values (plain strings: they are logged and saved as JSON)
#: flag of a response whose text already occurred earlier in the same item
DUPLICATE_FLAG: str = ResponseFlag.DUPLICATE.value
#: flag of every response of an item answered from the cache
CACHED_FLAG: str = ResponseFlag.CACHED.value
#: the SQLite store's layout (``PRAGMA user_version``). 1: keys of the fingerprint that covers
#: template text and meta RM weights, degraded judgments never stored. Version 0 stores (older
#: grm-plugin) hold keys that can never match again and may hold degraded judgments.
SCHEMA_VERSION = 1


class CacheStoreError(RuntimeError):
    """The judgment store (``CacheConfig.path``) cannot be used; the message names the file."""


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


def is_degraded(result: JudgmentResult) -> bool:
    """Whether ``result`` stands on fewer valid samples than were asked for (flagged
    ``ResponseFlag.DEGRADED`` by the judge).

    >>> is_degraded(JudgmentResult(scores=[5.0], flags=[[ResponseFlag.DEGRADED]]))
    True
    """
    return any(ResponseFlag.DEGRADED in f for f in result.flags)


def template_digest(spec: str) -> str:
    """SHA-256 of the judge template's source text (a preset's shipped file or the user's file).

    The text, not the name or path: an edited file is another judge, and the same text under
    another path is the same judge. A file is read again only when its modification time or
    size changed (``load_template`` reloads an edited file on the same signal, so the key
    follows the text the judge is really given).

    >>> template_digest("grm-plugin") == template_digest("grm-plugin@1")
    True
    >>> template_digest("grm-plugin") != template_digest("deepseek-grm")
    True
    """
    from .templates import TEMPLATES

    preset = TEMPLATES.get(spec.partition("@")[0])
    if preset is not None:
        return _preset_digest(preset.file)
    path = Path(spec).expanduser().resolve()
    st = path.stat()
    return _file_digest(str(path), st.st_mtime_ns, st.st_size)


@functools.cache
def _preset_digest(file: str) -> str:
    data = resources.files("grm_plugin.templates").joinpath(file).read_bytes()
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    """The SQLite store: key -> [texts, result JSON], layout ``SCHEMA_VERSION``.

    Opened and checked here, so that a store that cannot be used fails when the cache is built
    (naming the file) instead of failing every judgment later."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        fix = (
            f"delete or move {self.path}, or set cache.path to another file (cache.path: null "
            "keeps judgments in memory only)"
        )
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), check_same_thread=False)
            # reading the version and the tables reads the header: a file that is not SQLite
            # fails here, not at the first lookup
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT name FROM sqlite_master").fetchall()
            if version == 0 and not tables:  # a new store
                version = SCHEMA_VERSION
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version == SCHEMA_VERSION:
                with db:  # IF NOT EXISTS: two processes may create the same new store
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS judgments "
                        "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            raise CacheStoreError(
                f"judgment cache: cannot use {self.path} as the judgment store "
                f"({type(e).__name__}: {e}): {fix}"
            ) from e
        assert db is not None
        if version != SCHEMA_VERSION:
            db.close()
            # refused, not wiped: the file may be another program's database given by mistake
            raise CacheStoreError(
                f"judgment cache: {self.path} has schema version {version}, this grm-plugin "
                f"reads and writes schema version {SCHEMA_VERSION}"
                + (
                    " (version 0: written by an older grm-plugin, whose keys can never match "
                    "again and whose entries may be degraded judgments)"
                    if version < SCHEMA_VERSION
                    else " (written by a newer grm-plugin)"
                )
                + f": {fix}"
            )
        self._db = db

    def get(self, key: str) -> tuple[list[str], JudgmentResult] | None:
        """The entry of ``key``; raises ``sqlite3.Error`` when the store broke."""
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
        fingerprint: identifies the judge (everything that changes a judgment); part of every
            key. ``judge(..., fingerprint=...)`` overrides it for one call.

    Raises:
        CacheStoreError: ``config.path`` cannot be used as the store (not SQLite, not a file
            that can be opened, another schema version); the message names the file.
    """

    def __init__(self, config: CacheConfig, fingerprint: str) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self._memory: OrderedDict[str, tuple[list[str], JudgmentResult]] = OrderedDict()
        self._lock = threading.Lock()
        self._disk = _Disk(config.path) if config.path and config.max_items > 0 else None
        self._disk_warned = False
        self._counts = {
            "hits": 0,
            "misses": 0,
            "stored": 0,
            "duplicates": 0,
            "shared": 0,
            "degraded": 0,
            "disk_errors": 0,
        }
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

    def passes_through(self, responses: Sequence[str]) -> bool:
        """True when ``judge`` would hand back the judgment of ``responses`` as it comes:
        nothing to look up or store, no copy to judge once (callers then skip ``judge`` and
        its per-item lists, sets and dicts).

        >>> JudgmentCache(CacheConfig(), "").passes_through(["a", "b"])
        True
        >>> JudgmentCache(CacheConfig(), "").passes_through(["a", "a"])  # dedup: judged once
        False
        """
        return not self.enabled and (not self.config.dedup or len(set(responses)) == len(responses))

    def stats(self) -> dict[str, int]:
        """Counts since start: ``hits``, ``misses``, ``stored``, ``duplicates`` (responses not
        sent because an identical one was in the same item), ``shared`` (misses answered by an
        identical judgment that was already running), ``degraded`` (judgments not stored
        because samples were missing), ``disk_errors`` (store reads and writes that failed),
        ``size`` (in memory)."""
        with self._lock:
            return {**self._counts, "size": len(self._memory)}

    def _lookup(self, key: str) -> tuple[list[str], JudgmentResult] | None:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
        if hit is None and self._disk is not None:
            try:
                hit = self._disk.get(key)
            except sqlite3.Error as e:  # the store broke after the start: a miss, not a failure
                self._disk_failed("read", e)
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

    def _disk_failed(self, what: str, error: sqlite3.Error) -> None:
        # one loud line naming the file, then a count: a broken store must not flood the log
        # once per lookup, and must never fail the judgment (that would blame the judge)
        with self._lock:
            self._counts["disk_errors"] += 1
            first = not self._disk_warned
            self._disk_warned = True
        if first:
            log.warning(
                "judgment cache: could not %s the store %s (%s: %s): judging without it where "
                "it fails (counted in stats()['disk_errors']; this is logged once)",
                what,
                self._disk.path if self._disk is not None else self.config.path,
                type(error).__name__,
                error,
            )

    def _store(self, key: str, texts: list[str], result: JudgmentResult) -> None:
        self._remember(key, (texts, result))
        if self._disk is not None:
            try:
                self._disk.put(key, texts, result)
            except sqlite3.Error as e:  # a full disk must not fail the judgment
                self._disk_failed("write", e)
        with self._lock:
            self._counts["stored"] += 1

    async def judge(
        self,
        judge: JudgeFn,
        prompt: Any,
        responses: Sequence[str],
        reference: str | None,
        *,
        fingerprint: str | None = None,
    ) -> JudgmentResult:
        """``await judge(prompt, distinct_responses, reference)`` unless the cache has it;
        the result is for ``responses`` as given (copies and order restored, flagged).
        ``fingerprint``: the judge's identity for this call (default: the cache's)."""
        responses = list(responses)
        if self.passes_through(responses):
            return await judge(prompt, responses, reference)
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

        identity = self.fingerprint if fingerprint is None else fingerprint
        key = cache_key(prompt, distinct, reference, identity) if self.enabled else None
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
            complete = not result.failed and all(s is not None for s in result.scores)
            if key is not None and complete and is_degraded(result):
                # not stored: a degraded judgment is a partial failure (timeouts, engine errors,
                # unparsed texts) and is judged again next time, like a failure. Storing it
                # marked degraded would only pin the noisier score for later hits.
                with self._lock:
                    self._counts["degraded"] += 1
            elif key is not None and complete:
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
