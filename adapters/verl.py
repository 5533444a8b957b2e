"""verl 0.9.1 adapter: a generative reward model as a verl reward manager or reward function.

verl asks for one sample at a time (``RewardLoopWorker`` makes one task per sample and awaits
``reward_manager.run_single`` for each), so the responses of one prompt are gathered here: the
concurrent calls that share a group key (the sample's prompt and reference, and its ``uid``)
wait up to ``group_window`` seconds for each other and are judged together, in chunks of at
most ``group_size`` (``grm_plugin.grouping.GroupBatcher``). Identical responses are judged once.
With ``reward.num_workers > 1`` under Ray, verl spreads a uid's samples over its reward workers;
the manager then sends every sample to one named Ray actor per job, which runs this same path
for all workers (``grm_plugin.adapters.verl_group_actor``; ``group_actor=false`` turns it off).

Two ways in, no code change in verl:

1. The ``grm`` reward manager (registered through the ``verl.plugins`` entry point, which
   ``import verl`` loads), settings in ``reward.reward_kwargs``::

       reward.reward_manager.name=grm
       +reward.reward_kwargs.grm_config=/path/judge.yaml

2. A custom reward function (groups by prompt text + reference, as it sees no ``uid``)::

       reward.custom_reward_function.path=pkg://grm_plugin.adapters.verl
       reward.custom_reward_function.name=compute_score
       +reward.custom_reward_function.reward_kwargs.grm_config=/path/judge.yaml

The judge config comes from ``grm_config``, else ``$GRM_PLUGIN_CONFIG``; with neither (and no
judge launched by verl) the first call raises ``MissingJudgeConfigError`` naming the variable.
When verl launched the judge (``reward.reward_model.enable=True``) it passes
``reward_router_address`` and we talk to that OpenAI-compatible router (``http://{addr}/v1``).

Every sample returns the same keys (verl builds its extra-info columns from the first sample's
keys): ``score`` and ``EXTRA_KEYS`` (``grm_plugin.policy.REWARD_KEYS`` + ``grm_group_size``).
What a failure or an empty response gets is the ``RewardPolicy`` (``scale``, ``on_failure``,
``fallback``, ``empty`` in the same kwargs), applied by ``grm_plugin.group_rewards`` as in every
adapter; verl cannot leave a sample out, so an abstained sample gets the mean of the others
judged with it (zero GRPO advantage), or ``fallback`` when the judge scored none of them.

Example:
    >>> import asyncio
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> set_reward_fn(GenerativeRewardFn(RuleJudgeEngine()))
    >>> out = asyncio.run(compute_score("gsm8k", "720", "720", {"question": "24 * 30?"}))
    >>> out["score"], out["grm_raw"], out["grm_failed"]  # RuleJudgeEngine: 1 + len("720")
    (0.3333333333333333, 4.0, 0.0)
    >>> set_reward_fn(None)
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from grm_plugin.cache import with_training_cache
from grm_plugin.config import JudgeConfig, OpenAIEngineConfig, judge_config_from_env
from grm_plugin.deadline import total_bound
from grm_plugin.group_rewards import balanced_chunks, judged_reward
from grm_plugin.grouping import GroupBatcher, RewardItem
from grm_plugin.policy import REWARD_KEYS, RewardPolicy, RewardValue, summarize
from grm_plugin.reward import GenerativeRewardFn

if TYPE_CHECKING:  # verl (and torch) are only needed for the reward manager
    from verl import DataProto

__all__ = [
    "EXTRA_KEYS",
    "MANAGER_NAME",
    "JudgeRequest",
    "VerlSettings",
    "compute_score",
    "get_manager_cls",
    "judge_request",
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

    The policy keys (``scale``, ``on_failure``, ``fallback``, ``empty``, ``use_reference``)
    are those of ``grm_plugin.policy.RewardPolicy``.

    Example:
        >>> s = VerlSettings.from_kwargs({"scale": "raw", "group_size": 4})
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
    scale: Literal["unit", "raw", "sum"] = "unit"
    on_failure: Literal["abstain", "fallback"] = "abstain"
    fallback: float | None = None
    empty: Literal["lowest"] | float = "lowest"
    use_reference: bool = True

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> VerlSettings:
        """Validate ``kwargs`` (an OmegaConf DictConfig is fine too), minus verl's own keys."""
        data = _plain(kwargs) or {}
        return cls.model_validate({k: _plain(v) for k, v in data.items() if k not in _VERL_KWARGS})

    @property
    def policy(self) -> RewardPolicy:
        """The reward policy these settings describe."""
        return RewardPolicy(
            scale=self.scale,
            on_failure=self.on_failure,
            fallback=self.fallback,
            empty=self.empty,
            use_reference=self.use_reference,
        )

    def chunk_size(self, expected: int | None) -> int:
        """Largest chunk when ``expected`` responses of a prompt are split into near-equal
        chunks of at most ``group_size`` (8 by 4 -> 4 + 4; 5 by 4 -> 3 + 2, not 4 + 1)."""
        n = expected or self.rollout_n or self.group_size
        return max(1, len(balanced_chunks(n, self.group_size)[0]))


# --------------------------------------------------------------------------- judge cache

_override: GenerativeRewardFn | None = None
_judges: dict[str, GenerativeRewardFn] = {}
_judges_lock = threading.Lock()
#: per event loop (weakly: a closed loop's id can come back for a new one), then per judge and
#: chunk size: a batcher binds its futures to one loop
_batchers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, int, float], GroupBatcher]
] = weakref.WeakKeyDictionary()


def set_reward_fn(rm: GenerativeRewardFn | None) -> None:
    """Use ``rm`` for every call in this process, whatever the settings say (None: undo).

    For tests and for code that builds its judge itself (e.g. with a custom engine).
    """
    global _override
    _override = rm
    _batchers.clear()


def _judge_key(settings: VerlSettings, router_address: str | None) -> str:
    return json.dumps(
        [settings.grm_config, router_address, settings.router_model], sort_keys=True, default=str
    )


def _reward_fn(settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
    """The GenerativeRewardFn for these settings, built once per process (engines are heavy)."""
    if _override is not None:
        return _override
    key = _judge_key(settings, router_address)
    with _judges_lock:  # concurrent first calls must not load the model twice
        rm = _judges.get(key)
        if rm is None:
            rm = _judges[key] = _build(settings.grm_config, router_address, settings.router_model)
        return rm


async def _areward_fn(settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
    """``_reward_fn`` that builds in a thread: loading a local model takes seconds and must not
    stall verl's event loop (other samples, decoding)."""
    if _override is not None:
        return _override
    rm = _judges.get(_judge_key(settings, router_address))
    if rm is not None:
        return rm
    return await asyncio.to_thread(_reward_fn, settings, router_address)


def _build(
    source: str | dict | None, router_address: str | None, router_model: str | None
) -> GenerativeRewardFn:
    if isinstance(source, dict):
        config = JudgeConfig.model_validate(source)
    elif source is not None:
        config = JudgeConfig.load(source)
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
            update={"base_url": base_url, "model": router_model or config.engine.model}
        )
    else:
        engine = OpenAIEngineConfig(base_url=base_url, model=router_model)
    return GenerativeRewardFn.from_config(config.model_copy(update={"engine": engine}))


def _batcher(rm: GenerativeRewardFn, settings: VerlSettings, expected: int | None) -> GroupBatcher:
    """One batcher per event loop, judge and chunk size (a batcher binds to its loop)."""
    size = settings.chunk_size(expected)
    window = settings.group_window if size > 1 else 0.0
    per_loop = _batchers.setdefault(asyncio.get_running_loop(), {})
    key = (id(rm), size, window)
    batcher = per_loop.get(key)
    if batcher is None:
        batcher = per_loop[key] = GroupBatcher(rm, window=window, max_size=size)
    return batcher


# --------------------------------------------------------------------------- shared judging


class _Tally:
    """Running grm_* counts of this process, logged every ``SUMMARY_EVERY`` samples: verl's
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


_tally = _Tally()


def _plain(value: Any) -> Any:
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
    value = _plain(value)
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


def _find_prompt(
    sources: list[Mapping[str, Any]], prompt_key: str | None
) -> str | list[dict[str, str]] | None:
    keys = (prompt_key,) if prompt_key else DEFAULT_PROMPT_KEYS
    for key in keys:
        for src in sources:
            if key in src and (conv := _as_conversation(src[key])) is not None:
                return conv
    return None


async def _judge(
    prompt: str | list[dict[str, str]] | None,
    response: str,
    ground_truth: Any,
    settings: VerlSettings,
    router_address: str | None,
    *,
    group: Hashable | None = None,
    expected: int | None = None,
    spent: float = 0.0,
) -> dict[str, float]:
    """Judge one response with the others of its group; returns ``{"score", *EXTRA_KEYS}``.

    ``spent``: seconds of this sample's deadline already used elsewhere (a resend after the
    group actor died), so that a resent sample keeps one deadline, not a fresh one.

    Raises only when the judge cannot be built (no or a bad config): every sample would fail.
    """
    rm = await _areward_fn(settings, router_address)
    policy = settings.policy
    reference = policy.reference(_plain(ground_truth))
    shown = prompt if prompt is not None else PROMPT_PLACEHOLDER
    # a judge call has one prompt and one reference: the uid alone would judge a second prompt
    # sharing it (a dataset's repeated uid) against the first one's question and reference
    key = ("verl", json.dumps([shown, reference], sort_keys=True, default=str))
    # the group window is spent out of the judge's deadline, not added to it: a configured
    # batch deadline of 8 s answers within 8 s, as the server does (``total_bound``)
    bound = total_bound(rm.deadline, default=NO_DEADLINE_S)
    judged = await _batcher(rm, settings, expected).judge(
        RewardItem(shown, response, reference, group=key if group is None else (*key, group)),
        timeout=bound - spent,
    )
    # verl needs a number: an abstained sample gets the mean of the others judged with it
    sample = judged_reward(policy, judged, empty=not response.strip())
    mine = sample.value
    mine.no_prompt = prompt is None
    _tally.add(mine)
    return {"score": sample.reward, **mine.flags(), GROUP_SIZE_KEY: float(sample.group_size)}


@dataclass(frozen=True)
class JudgeRequest:
    """One sample's ``_judge`` call as data: what a reward worker sends to the job's group
    actor (``grm_plugin.adapters.verl_group_actor``) when verl runs several workers."""

    prompt: str | list[dict[str, str]] | None
    response: str
    ground_truth: Any
    settings: VerlSettings
    router_address: str | None
    group: Hashable | None = None
    expected: int | None = None
    #: seconds of the sample's deadline used before this send (resends after an actor died)
    spent: float = 0.0


async def judge_request(request: JudgeRequest) -> dict[str, float]:
    """``_judge`` for a ``JudgeRequest``: the in-process path, run where the request lands.

    Example:
        >>> from grm_plugin import GenerativeRewardFn
        >>> from grm_plugin.testing import RuleJudgeEngine
        >>> set_reward_fn(GenerativeRewardFn(RuleJudgeEngine()))
        >>> request = JudgeRequest("Say hi", "hi", None, VerlSettings(group_window=0), None)
        >>> asyncio.run(judge_request(request))["grm_raw"]  # RuleJudgeEngine: 1 + len("hi")
        3.0
        >>> set_reward_fn(None)
    """
    return await _judge(
        request.prompt,
        request.response,
        request.ground_truth,
        request.settings,
        request.router_address,
        group=request.group,
        expected=request.expected,
        spent=request.spent,
    )


# --------------------------------------------------------------------------- reward function


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
    info = _plain(extra_info)
    prompt = _find_prompt([info] if isinstance(info, Mapping) else [], settings.prompt_key)
    return await _judge(
        prompt,
        solution_str if isinstance(solution_str, str) else str(solution_str),
        ground_truth,
        settings,
        kwargs.get("reward_router_address"),
    )


# --------------------------------------------------------------------------- reward manager

_manager_cls: type | None = None
_manager_lock = threading.Lock()


def get_manager_cls() -> type:
    """Build ``GRMRewardManager`` (needs verl) and register it as ``grm``; idempotent.

    Built on first use, not at import, so that ``compute_score`` imports without verl (and
    verl's registry refuses a second, different class under the same name).
    """
    global _manager_cls
    with _manager_lock:
        if _manager_cls is None:
            _manager_cls = _make_manager_cls()
        return _manager_cls


def _make_manager_cls() -> type:
    from verl.experimental.reward_loop.reward_manager import register
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    class GRMRewardManager(RewardManagerBase):
        """verl reward manager: the responses of one prompt (same ``uid``) judged together.

        Settings come from ``config.reward.reward_kwargs`` (see ``VerlSettings``); the group's
        expected size is ``actor_rollout_ref.rollout.n`` unless ``rollout_n`` is set. The
        prompt is the sample's ``raw_prompt`` messages, else its decoded prompt tokens.

        Example (verl config)::

            reward.reward_manager.name=grm +reward.reward_kwargs.grm_config=judge.yaml
        """

        def __init__(
            self,
            config: Any,
            tokenizer: Any,
            compute_score: Any = None,
            reward_router_address: str | None = None,
            reward_model_tokenizer: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(config, tokenizer, compute_score)
            reward_cfg = config.get("reward") or {}
            self.settings = VerlSettings.from_kwargs(reward_cfg.get("reward_kwargs"))
            rollout = (config.get("actor_rollout_ref") or {}).get("rollout") or {}
            self.expected = self.settings.rollout_n or _plain(rollout.get("n"))
            self.reward_router_address = reward_router_address
            self.reward_model_tokenizer = reward_model_tokenizer
            workers = _plain(reward_cfg.get("num_workers"))
            from grm_plugin.adapters.verl_group_actor import group_router

            # several workers: a uid's samples meet in the job's group actor (one process)
            self._router = group_router(
                self.settings, reward_router_address, workers, self.expected
            )
            if (
                self._router is None
                and isinstance(workers, int)
                and workers > 1
                and self.settings.chunk_size(self.expected) > 1
            ):
                log.warning(
                    "grm reward manager: reward.num_workers=%d without a group actor (Ray not "
                    "initialised, or group_actor=false): verl sends each sample to one worker, "
                    "so a prompt's responses are judged together only when they reach the same "
                    "worker. Set reward.num_workers=1 (judging is I/O-bound: one async worker "
                    "suffices).",
                    workers,
                )
            self._warned_no_reference = False

        def _decode(self, ids: Any) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        async def run_single(self, data: DataProto) -> dict[str, Any]:
            item = data[-1:][0]  # as verl's managers: for multi-sequence outputs, the last one
            response_ids = item.batch["responses"]
            response_length = response_ids.shape[-1]
            attention_mask = item.batch["attention_mask"]
            valid_response_ids = response_ids[: int(attention_mask[-response_length:].sum())]
            # decoding can take a while on long texts: keep the event loop free
            response = await self.loop.run_in_executor(None, self._decode, valid_response_ids)

            non_tensor = item.non_tensor_batch
            extra_info = _plain(non_tensor.get("extra_info")) or {}
            sources = [non_tensor, extra_info if isinstance(extra_info, Mapping) else {}]
            prompt = _find_prompt(sources, self.settings.prompt_key)
            if prompt is None and "prompts" in item.batch.keys():
                prompt_ids = item.batch["prompts"]  # left-padded
                n_prompt = int(attention_mask[: prompt_ids.shape[-1]].sum())
                if n_prompt > 0:
                    text = await self.loop.run_in_executor(
                        None, self._decode, prompt_ids[prompt_ids.shape[-1] - n_prompt :]
                    )
                    prompt = text if text.strip() else None
            reward_model = _plain(non_tensor.get("reward_model"))
            if reward_model is None and not self._warned_no_reference:
                self._warned_no_reference = True
                log.warning(
                    "grm reward manager: the sample has no reward_model/ground_truth: verl's "
                    "colocated reward path (reward_model.enable=True without "
                    "enable_resource_pool=True) passes only prompts and responses, so the judge "
                    "gets no reference answer"
                )
            ground_truth = (reward_model or {}).get("ground_truth")
            uid = _plain(non_tensor.get("uid"))
            request = JudgeRequest(
                prompt,
                response,
                ground_truth,
                self.settings,
                self.reward_router_address,
                group=None if uid is None else str(uid),
                expected=self.expected,
            )
            if self._router is not None:
                out = await self._router.judge(request)
            else:
                out = await judge_request(request)
            return {"reward_score": out["score"], "reward_extra_info": out}

    # picklable by name (resolved through __getattr__ below)
    GRMRewardManager.__module__ = __name__
    GRMRewardManager.__qualname__ = "GRMRewardManager"
    return register(MANAGER_NAME)(GRMRewardManager)


def __getattr__(name: str) -> Any:
    # ``GRMRewardManager`` exists only once verl is importable; the ``verl.plugins`` entry point
    # names it, so ``import verl`` triggers this and registers the manager.
    if name == "GRMRewardManager":
        return get_manager_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
