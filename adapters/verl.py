"""verl 0.9.1 adapter: settings, sample translation and the judging state shared by its two ways in.

verl asks for one sample at a time (``RewardLoopWorker`` makes one task per sample and awaits
``reward_manager.run_single`` for each), so the responses of one prompt are gathered here: the
concurrent calls that share a group key (the sample's prompt and reference, and its ``uid``)
wait up to ``group_window`` seconds for each other and are judged together, in chunks of at
most ``group_size`` (``grm_plugin.grouping.GroupBatcher``). Identical responses are judged once.
With ``reward.num_workers > 1`` under Ray, verl spreads a uid's samples over its reward workers;
the manager then sends every sample to one named Ray actor per job, which runs this same path
for all workers (``grm_plugin.adapters.verl_group_actor``; ``group_actor=false`` turns it off).

Two ways in, no code change in verl:

1. The ``grm`` reward manager (``grm_plugin.adapters.verl_manager``, registered through the
   ``verl.plugins`` entry point, which ``import verl`` loads), settings in
   ``reward.reward_kwargs``::

       reward.reward_manager.name=grm
       +reward.reward_kwargs.grm_config=/path/judge.yaml
       +reward.reward_kwargs.policy.scale=raw

2. A custom reward function (groups by prompt text + reference, as it sees no ``uid``)::

       reward.custom_reward_function.path=pkg://grm_plugin.adapters.verl
       reward.custom_reward_function.name=compute_score
       +reward.custom_reward_function.reward_kwargs.grm_config=/path/judge.yaml

This module imports no verl: the function path, the settings and the Ray actor need none.

The judge config comes from ``grm_config`` (``JudgeConfig.coerce``: a path or a dict), else
``$GRM_PLUGIN_CONFIG``; with neither (and no judge launched by verl) the first call raises
``MissingJudgeConfigError`` naming the variable. When verl launched the judge
(``reward.reward_model.enable=True``) it passes ``reward_router_address`` and we talk to that
OpenAI-compatible router (``http://{addr}/v1``).

Every sample returns the same keys (verl builds its extra-info columns from the first sample's
keys): ``score`` and ``EXTRA_KEYS`` (``grm_plugin.policy.REWARD_KEYS`` + ``grm_group_size``).
What a failure or an empty response gets is the ``RewardPolicy`` nested as ``policy`` in the
same kwargs, applied by ``grm_plugin.group_rewards`` as in every adapter; verl cannot leave a
sample out, so an abstained sample gets the mean of the others judged with it (zero GRPO
advantage), or the policy's ``fallback`` when the judge scored none of them.

Judging state (built judges, group batchers, the running tally) lives in a ``VerlJudging``
object owned by whoever judges: the manager instance, the job's Ray actor, and, for
``compute_score`` (a plain function verl calls with no instance of its own), the one
``FUNCTION_JUDGING`` of the process.

Example:
    >>> import asyncio
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> judging = VerlJudging(GenerativeRewardFn(RuleJudgeEngine()))
    >>> request = JudgeRequest("24 * 30?", "720", "720", VerlSettings(), None)
    >>> out = asyncio.run(judging.judge(request))
    >>> out["score"], out["grm_raw"], out["grm_failed"]  # RuleJudgeEngine: 1 + len("720")
    (0.3333333333333333, 4.0, 0.0)
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grm_plugin.cache import with_training_cache
from grm_plugin.config import JudgeConfig, OpenAIEngineConfig, judge_config_from_env
from grm_plugin.deadline import Expiry, total_bound
from grm_plugin.group_rewards import balanced_chunks, judged_reward
from grm_plugin.grouping import GroupBatcher, RewardItem
from grm_plugin.policy import REWARD_KEYS, RewardPolicy, RewardValue, summarize
from grm_plugin.reward import GenerativeRewardFn

__all__ = [
    "EXTRA_KEYS",
    "FUNCTION_JUDGING",
    "MANAGER_NAME",
    "JudgeRequest",
    "VerlJudging",
    "VerlSettings",
    "build_judge",
    "compute_score",
    "find_prompt",
    "plain",
    "set_reward_fn",
]

log = logging.getLogger(__name__)

#: registry name of the reward manager (``reward.reward_manager.name=grm``)
MANAGER_NAME = "grm"
#: how many distinct responses the judge saw together for this sample (1 = pointwise)
GROUP_SIZE_KEY = "grm_group_size"
#: extra keys of every result, besides ``score`` (verl keeps the first sample's keys for all)
EXTRA_KEYS: tuple[str, ...] = (*REWARD_KEYS, GROUP_SIZE_KEY)
#: extra_info / non-tensor keys tried, in order, for the prompt when ``prompt_key`` is unset
DEFAULT_PROMPT_KEYS = ("raw_prompt", "prompt", "question")
#: what the judge sees when no prompt can be found (flagged with ``grm_no_prompt=1``)
PROMPT_PLACEHOLDER = (
    "(The original prompt was not passed to the reward function. Judge the response on its own "
    "merits and against the reference answer, if one is given.)"
)
#: keyword arguments verl itself adds to a reward function call (not settings)
_VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})
#: judged samples between two INFO lines with the grm_* rates (training metrics do not get them)
SUMMARY_EVERY = 256
#: a sample's bound when the judge's deadline sets neither ``batch`` nor ``item``
NO_DEADLINE_S = 24 * 3600.0


class VerlSettings(BaseModel):
    """Adapter settings, read from verl's ``reward_kwargs``; an unknown key is an error.

    The reward policy is nested as ``policy`` (``grm_plugin.policy.RewardPolicy``: ``scale``,
    ``on_failure``, ``fallback``, ``empty``, ``use_reference``), as in every adapter's settings;
    in Hydra: ``+reward.reward_kwargs.policy.scale=raw``.

    Example:
        >>> s = VerlSettings.from_kwargs({"policy": {"scale": "raw"}, "group_size": 4})
        >>> s.policy.fallback_value(), s.chunk_size(8), s.chunk_size(5)
        (5.5, 4, 3)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    grm_config: str | dict | None = Field(
        None, description="JudgeConfig path or dict; default $GRM_PLUGIN_CONFIG"
    )
    prompt_key: str | None = Field(
        None, description=f"extra_info key holding the prompt; default: try {DEFAULT_PROMPT_KEYS}"
    )
    router_model: str | None = Field(
        None, description="model name at verl's router; None: the first one it lists"
    )
    group_size: int = Field(8, ge=1, description="responses of one prompt judged together, at most")
    group_window: float = Field(
        5.0,
        ge=0.0,
        description="seconds a prompt's first response waits for the others (part of the "
        "judge's deadline.batch, not added to it)",
    )
    rollout_n: int | None = Field(
        None, ge=1, description="responses per prompt (manager: actor_rollout_ref.rollout.n)"
    )
    group_actor: bool = Field(
        True,
        description="manager with reward.num_workers > 1 under Ray: judge every worker's "
        "samples in one named Ray actor per job, so that a uid's samples meet",
    )
    policy: RewardPolicy = Field(
        default_factory=RewardPolicy, description="what a judgment, failure, empty is worth"
    )

    @model_validator(mode="before")
    @classmethod
    def _policy_keys_are_nested(cls, data: Any) -> Any:
        # the flat keys of earlier versions would otherwise fail as "extra" with no hint
        if isinstance(data, Mapping):
            flat = sorted(set(data) & set(RewardPolicy.model_fields))
            if flat:
                raise ValueError(
                    f"{', '.join(flat)}: reward policy keys are nested under `policy` "
                    f"(e.g. +reward.reward_kwargs.policy.{flat[0]}=...)"
                )
        return data

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> VerlSettings:
        """Validate ``kwargs`` (an OmegaConf DictConfig is fine too), minus verl's own keys."""
        data = plain(kwargs) or {}
        return cls.model_validate({k: plain(v) for k, v in data.items() if k not in _VERL_KWARGS})

    def chunk_size(self, expected: int | None) -> int:
        """Largest chunk when ``expected`` responses of a prompt are split into near-equal
        chunks of at most ``group_size`` (8 by 4 -> 4 + 4; 5 by 4 -> 3 + 2, not 4 + 1)."""
        n = expected or self.rollout_n or self.group_size
        return max(1, len(balanced_chunks(n, self.group_size)[0]))


# --------------------------------------------------------------------------- the judge


def build_judge(settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
    """The judge these settings describe: ``grm_config`` (``JudgeConfig.coerce``), else
    ``$GRM_PLUGIN_CONFIG``; with verl's router (``router_address``) as its engine when verl
    launched the judge. Loads a local model: call once per owner (``VerlJudging`` does)."""
    if settings.grm_config is not None:
        config = JudgeConfig.coerce(settings.grm_config)
    elif router_address is not None:
        # verl launched the judge: its router is the engine; sampling from $GRM_PLUGIN_CONFIG
        # when set, else the defaults
        try:
            config = judge_config_from_env("verl reward worker")
        except RuntimeError:
            config = JudgeConfig()
    else:
        config = judge_config_from_env(
            "verl reward worker (set reward_kwargs.grm_config, or export the variable to "
            "the Ray workers, e.g. ray_kwargs.ray_init.runtime_env.env_vars)"
        )
    config = with_training_cache(config)
    if router_address is None:
        return GenerativeRewardFn.from_config(config)
    # keep the config's sampling, swap its engine for verl's router
    base_url = f"http://{router_address}/v1"
    if isinstance(config.engine, OpenAIEngineConfig):
        engine = config.engine.model_copy(
            update={"base_url": base_url, "model": settings.router_model or config.engine.model}
        )
    else:
        engine = OpenAIEngineConfig(base_url=base_url, model=settings.router_model)
    return GenerativeRewardFn.from_config(config.model_copy(update={"engine": engine}))


class _Tally:
    """Running grm_* counts of one owner, logged every ``SUMMARY_EVERY`` samples: verl's
    trainer logs reward extra info only for validation, so this is where training sees them."""

    def __init__(self) -> None:
        self.values: list[RewardValue] = []
        self.failures = 0

    def add(self, value: RewardValue) -> None:
        self.values.append(value)
        if value.failed:
            self.failures += 1
            if self.failures <= 10 or self.failures % 100 == 0:  # bounded: this runs per sample
                log.warning(
                    "grm judge failed (%d so far, kind %s): %s",
                    self.failures,
                    value.failure_kind.value if value.failure_kind else "?",
                    value.error,
                )
        if len(self.values) >= SUMMARY_EVERY:
            rates = {k: round(v, 4) for k, v in summarize(self.values).items() if v}
            log.info("grm rewards, last %d samples: %s", len(self.values), rates)
            self.values = []


# --------------------------------------------------------------------------- translation


def plain(value: Any) -> Any:
    """OmegaConf containers and numpy arrays to plain Python (verl hands both)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _as_conversation(value: Any) -> str | list[dict[str, str]] | None:
    """A prompt string or chat message list, or None if ``value`` is neither."""
    value = plain(value)
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, Mapping) for m in value):
        messages = []
        for m in value:
            content = m.get("content")
            if isinstance(content, list):  # multimodal parts: keep the text ones
                content = "\n".join(
                    p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("text")
                )
            if not isinstance(content, str):
                return None
            messages.append({"role": str(m.get("role", "user")), "content": content})
        return messages
    return None


def find_prompt(
    sources: list[Mapping[str, Any]], prompt_key: str | None
) -> str | list[dict[str, str]] | None:
    keys = (prompt_key,) if prompt_key else DEFAULT_PROMPT_KEYS
    for key in keys:
        for src in sources:
            if key in src and (conv := _as_conversation(src[key])) is not None:
                return conv
    return None


@dataclass(frozen=True)
class JudgeRequest:
    """One sample's judging call as data: what a reward worker judges itself or sends to the
    job's group actor (``grm_plugin.adapters.verl_group_actor``) when verl runs several
    workers."""

    prompt: str | list[dict[str, str]] | None
    response: str
    ground_truth: Any
    settings: VerlSettings
    router_address: str | None
    group: Hashable | None = None
    expected: int | None = None
    #: seconds of the sample's deadline used before this send (resends after an actor died)
    spent: float = 0.0


class VerlJudging:
    """The judging state of one owner (a manager instance, the job's Ray actor, the function
    path): judges built once per configuration (engines are heavy), one ``GroupBatcher`` per
    event loop, judge and chunk size (a batcher binds its futures to one loop), the tally.

    ``judge``: use this judge whatever the settings say (tests, a judge built in code).

    Example:
        >>> import asyncio
        >>> from grm_plugin import GenerativeRewardFn
        >>> from grm_plugin.testing import RuleJudgeEngine
        >>> judging = VerlJudging(GenerativeRewardFn(RuleJudgeEngine()))
        >>> request = JudgeRequest("Say hi", "hi", None, VerlSettings(group_window=0), None)
        >>> asyncio.run(judging.judge(request))["grm_raw"]  # RuleJudgeEngine: 1 + len("hi")
        3.0
    """

    def __init__(self, judge: GenerativeRewardFn | None = None) -> None:
        self._judges_lock = threading.Lock()
        self.reset(judge)

    def reset(self, judge: GenerativeRewardFn | None = None) -> None:
        """Forget the built judges and batchers; judge with ``judge`` from now on (None: build
        from the settings)."""
        self._fixed = judge
        self._judges: dict[str, Future[GenerativeRewardFn]] = {}
        self._batchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[int, int, float], GroupBatcher]
        ] = weakref.WeakKeyDictionary()
        self._tally = _Tally()

    @staticmethod
    def _judge_key(settings: VerlSettings, router_address: str | None) -> str:
        return json.dumps(
            [settings.grm_config, router_address, settings.router_model],
            sort_keys=True,
            default=str,
        )

    def _build_slot(
        self, settings: VerlSettings, router_address: str | None
    ) -> tuple[str, Future[GenerativeRewardFn], bool]:
        """The key and future of this configuration's judge, and whether the caller builds it
        (the first to ask: concurrent first calls must not load the model twice)."""
        key = self._judge_key(settings, router_address)
        with self._judges_lock:
            future = self._judges.get(key)
            if future is not None:
                return key, future, False
            future = self._judges[key] = Future()
            return key, future, True

    def _build_into(
        self,
        key: str,
        future: Future[GenerativeRewardFn],
        settings: VerlSettings,
        router_address: str | None,
    ) -> None:
        try:
            future.set_result(build_judge(settings, router_address))
        except BaseException as e:
            with self._judges_lock:  # not kept: the next sample tries again
                self._judges.pop(key, None)
            future.set_exception(e)

    def reward_fn(self, settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
        """The judge for these settings, built on first use."""
        if self._fixed is not None:
            return self._fixed
        key, future, mine = self._build_slot(settings, router_address)
        if mine:
            self._build_into(key, future, settings, router_address)
        return future.result()

    async def areward_fn(
        self, settings: VerlSettings, router_address: str | None
    ) -> GenerativeRewardFn:
        """``reward_fn`` that builds in a thread: loading a local model takes seconds and must
        not stall verl's event loop (other samples, decoding). Every caller awaits, even once
        the judge is built: a sample that came later must not overtake those still waking up
        from the build, so the batcher sees the samples in the order they came."""
        if self._fixed is not None:
            return self._fixed
        key, future, mine = self._build_slot(settings, router_address)
        waiter = asyncio.wrap_future(future)
        if mine:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self._build_into, key, future, settings, router_address)
        return await waiter

    def _batcher(
        self, rm: GenerativeRewardFn, settings: VerlSettings, expected: int | None
    ) -> GroupBatcher:
        size = settings.chunk_size(expected)
        window = settings.group_window if size > 1 else 0.0
        per_loop = self._batchers.setdefault(asyncio.get_running_loop(), {})
        key = (id(rm), size, window)
        batcher = per_loop.get(key)
        if batcher is None:
            batcher = per_loop[key] = GroupBatcher(rm, window=window, max_size=size)
        return batcher

    async def judge(self, request: JudgeRequest) -> dict[str, float]:
        """Judge one response with the others of its group; returns ``{"score", *EXTRA_KEYS}``.

        Raises only when the judge cannot be built (no or a bad config): every sample would
        fail.
        """
        rm = await self.areward_fn(request.settings, request.router_address)
        policy = request.settings.policy
        reference = policy.reference(plain(request.ground_truth))
        shown = request.prompt if request.prompt is not None else PROMPT_PLACEHOLDER
        # a judge call has one prompt and one reference: the uid alone would judge a second
        # prompt sharing it (a dataset's repeated uid) against the first one's question
        key = ("verl", json.dumps([shown, reference], sort_keys=True, default=str))
        group = key if request.group is None else (*key, request.group)
        # the group window is spent out of the judge's deadline, not added to it: a configured
        # batch deadline of 8 s answers within 8 s, as the server does (``total_bound``)
        # (seconds spent travel with a resent request, not an Expiry: another process's
        # monotonic clock is not this one's)
        bound = total_bound(rm.deadline, default=NO_DEADLINE_S)
        judged = await self._batcher(rm, request.settings, request.expected).judge(
            RewardItem(shown, request.response, reference, group=group),
            expiry=Expiry.after(bound - request.spent),
        )
        # verl needs a number: an abstained sample gets the mean of the others judged with it
        sample = judged_reward(policy, judged, empty=not request.response.strip())
        mine = sample.value
        mine.no_prompt = request.prompt is None
        self._tally.add(mine)
        return {"score": sample.reward, **mine.flags(), GROUP_SIZE_KEY: float(sample.group_size)}

    def stats(self) -> dict[str, int]:
        """Items and judge calls of this owner's batchers (for tests and logs)."""
        batchers = [b for per_loop in self._batchers.values() for b in per_loop.values()]
        return {
            "items": sum(b.stats.items for b in batchers),
            "judgments": sum(b.stats.judgments for b in batchers),
        }


# --------------------------------------------------------------------------- reward function

#: the function path's judging state: verl calls ``compute_score`` as a plain function, with
#: no instance to hold it, so it is the process's (the only module-level mutable object)
FUNCTION_JUDGING: Final = VerlJudging()


def set_reward_fn(rm: GenerativeRewardFn | None) -> None:
    """Judge every ``compute_score`` call of this process with ``rm``, whatever the settings
    say (None: build from the settings again). For code that builds its judge itself (e.g.
    with a custom engine); the manager builds its own from its settings."""
    FUNCTION_JUDGING.reset(rm)  # batchers bound to the old judge go with it


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl custom reward function: the judge's score of one response, judged with the
    concurrent calls that share its prompt and reference (see ``VerlSettings``).

    ``ground_truth`` is the judge's reference answer; the prompt is read from ``extra_info``
    (``prompt_key``, else ``raw_prompt``, ``prompt``, ``question``). verl adds
    ``reward_router_address`` when it launched the judge; ``kwargs`` also carry the
    ``reward_kwargs`` of the config.

    Example:
        >>> out = asyncio.run(compute_score("src", "Paris", "Paris", {"question": "Capital?"},
        ...                                 grm_config="judge.yaml"))  # doctest: +SKIP
        >>> sorted(out) == sorted(("score", *EXTRA_KEYS))  # doctest: +SKIP
        True
    """
    settings = VerlSettings.from_kwargs(kwargs)
    info = plain(extra_info)
    prompt = find_prompt([info] if isinstance(info, Mapping) else [], settings.prompt_key)
    response = solution_str if isinstance(solution_str, str) else str(solution_str)
    router_address = kwargs.get("reward_router_address")
    request = JudgeRequest(prompt, response, ground_truth, settings, router_address)
    return await FUNCTION_JUDGING.judge(request)
