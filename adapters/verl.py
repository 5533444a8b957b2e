"""verl 0.9.1 adapter: a generative reward model as a verl reward function or reward manager.

Two ways in, no code change in verl:

1. Custom reward function (one sample per call, the usual verl way)::

       reward.custom_reward_function.path=pkg://grm_plugin.adapters.verl
       reward.custom_reward_function.name=compute_score
       +reward.custom_reward_function.reward_kwargs.grm_config=/path/judge.yaml

2. Reward manager, registered as ``grm`` through the ``verl.plugins`` entry point
   (``import verl`` loads it)::

       reward.reward_manager.name=grm
       +reward.reward_kwargs.grm_config=/path/judge.yaml

Where the judge runs: when verl launched it (``reward.reward_model.enable=True``) verl passes
``reward_router_address`` and we talk to that OpenAI-compatible router (``http://{addr}/v1``);
otherwise the engine of the judge config (``grm_config``, else ``$GRM_PLUGIN_CONFIG``) is used.

Every call returns the same keys (verl builds its extra-info columns from the first sample's
keys): ``score``, ``grm_raw`` (the judge's 1-10 score, 0.0 when none), ``grm_failed``,
``grm_num_valid``, ``grm_no_prompt``, ``grm_empty``. A judge failure never raises: it gives the
fallback score (the middle of the scale unless ``fallback_score`` is set) and ``grm_failed=1``.

Example:
    >>> import asyncio
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> set_reward_fn(GenerativeRewardFn(RuleJudgeEngine()))
    >>> out = asyncio.run(compute_score("gsm8k", "720", "720", {"question": "24 * 30?"}))
    >>> out["score"], out["grm_raw"], out["grm_failed"]  # RuleJudgeEngine: 1 + len("720")
    (0.3333333333333333, 4.0, 0)
    >>> set_reward_fn(None)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from grm_plugin.config import JudgeConfig, OpenAIEngineConfig
from grm_plugin.parsing import to_unit
from grm_plugin.reward import GenerativeRewardFn

if TYPE_CHECKING:  # verl (and torch) are only needed for the reward manager
    from verl import DataProto

__all__ = [
    "ENV_CONFIG",
    "EXTRA_KEYS",
    "MANAGER_NAME",
    "VerlSettings",
    "compute_score",
    "get_manager_cls",
    "set_reward_fn",
]

log = logging.getLogger(__name__)

#: environment variable naming a YAML/JSON JudgeConfig, used when ``grm_config`` is not given
ENV_CONFIG = "GRM_PLUGIN_CONFIG"
#: registry name of the reward manager (``reward.reward_manager.name=grm``)
MANAGER_NAME = "grm"
#: extra keys of every result, besides ``score`` (verl keeps the first sample's keys for all)
EXTRA_KEYS = ("grm_raw", "grm_failed", "grm_num_valid", "grm_no_prompt", "grm_empty")
#: extra_info / non-tensor keys tried, in order, for the prompt when ``prompt_key`` is unset
DEFAULT_PROMPT_KEYS = ("raw_prompt", "prompt", "question")
#: what the judge sees when no prompt can be found (flagged with ``grm_no_prompt=1``)
PROMPT_PLACEHOLDER = (
    "(The original prompt was not passed to the reward function. Judge the response on its own "
    "merits and against the reference answer, if one is given.)"
)


class VerlSettings(BaseModel):
    """Adapter settings, read from verl's ``reward_kwargs`` (unknown keys are ignored).

    Example:
        >>> VerlSettings.from_kwargs({"score_scale": "raw", "other": 1}).fallback
        5.5
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    grm_config: str | dict | None = Field(
        None, description=f"JudgeConfig path or dict; default ${ENV_CONFIG}, else the demo judge"
    )
    prompt_key: str | None = Field(
        None, description=f"extra_info key holding the prompt; default: try {DEFAULT_PROMPT_KEYS}"
    )
    score_scale: Literal["unit", "raw"] = Field(
        "unit", description="'unit': (s - 1) / 9 in [0, 1]; 'raw': the judge's 1-10 score"
    )
    fallback_score: float | None = Field(
        None, description="score when the judge fails (output scale); None: middle of the scale"
    )
    router_model: str | None = Field(
        None, description="model name at verl's router; None: the first one it lists"
    )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> VerlSettings:
        """Validate the known keys of ``kwargs`` (an OmegaConf DictConfig is fine too)."""
        data = _plain(kwargs) or {}
        return cls.model_validate({k: _plain(v) for k, v in data.items() if k in cls.model_fields})

    def scale(self, raw: float) -> float:
        """Map a 1-10 judge score to the output scale."""
        return to_unit(raw) if self.score_scale == "unit" else float(raw)

    @property
    def fallback(self) -> float:
        # the middle, not the bottom: a judge failure says nothing about the response's quality
        if self.fallback_score is not None:
            return float(self.fallback_score)
        return self.scale(5.5)


# --------------------------------------------------------------------------- judge cache

_override: GenerativeRewardFn | None = None
_cache: dict[str, GenerativeRewardFn] = {}
_cache_lock = threading.Lock()


def set_reward_fn(rm: GenerativeRewardFn | None) -> None:
    """Use ``rm`` for every call in this process, whatever the settings say (None: undo).

    For tests and for code that builds its judge itself (e.g. with a custom engine).
    """
    global _override
    _override = rm


def _cache_key(settings: VerlSettings, router_address: str | None) -> tuple[str, Any]:
    source = settings.grm_config if settings.grm_config is not None else os.environ.get(ENV_CONFIG)
    key = json.dumps([source, router_address, settings.router_model], sort_keys=True, default=str)
    return key, source


def _reward_fn(settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
    """The GenerativeRewardFn for these settings, built once per process (engines are heavy)."""
    if _override is not None:
        return _override
    key, source = _cache_key(settings, router_address)
    with _cache_lock:  # concurrent first calls must not load the model twice
        rm = _cache.get(key)
        if rm is None:
            rm = _cache[key] = _build(source, router_address, settings.router_model)
        return rm


async def _areward_fn(settings: VerlSettings, router_address: str | None) -> GenerativeRewardFn:
    """``_reward_fn`` that builds in a thread: loading a local model takes seconds and must not
    stall verl's event loop (other samples, decoding)."""
    if _override is not None:
        return _override
    rm = _cache.get(_cache_key(settings, router_address)[0])
    if rm is not None:
        return rm
    return await asyncio.to_thread(_reward_fn, settings, router_address)


def _build(
    source: str | dict | None, router_address: str | None, router_model: str | None
) -> GenerativeRewardFn:
    if source is None:
        config = JudgeConfig()
    elif isinstance(source, dict):
        config = JudgeConfig.model_validate(source)
    else:
        config = JudgeConfig.load(source)
    if router_address is None:
        return GenerativeRewardFn.from_config(config)
    # verl launched the judge: keep the config's sampling, swap its engine for verl's router
    base_url = f"http://{router_address}/v1"
    if isinstance(config.engine, OpenAIEngineConfig):
        engine = config.engine.model_copy(
            update={"base_url": base_url, "model": router_model or config.engine.model}
        )
    else:
        engine = OpenAIEngineConfig(base_url=base_url, model=router_model)
    return GenerativeRewardFn.from_config(config.model_copy(update={"engine": engine}))


# --------------------------------------------------------------------------- shared judging

_failures = 0


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


def _reference(ground_truth: Any) -> str | None:
    ground_truth = _plain(ground_truth)
    if ground_truth is None:
        return None
    text = ground_truth if isinstance(ground_truth, str) else json.dumps(ground_truth, default=str)
    return text if text.strip() else None


async def _judge(
    prompt: str | list[dict[str, str]] | None,
    response: str,
    reference: str | None,
    settings: VerlSettings,
    router_address: str | None,
) -> dict[str, float | int]:
    """Judge one response; always returns ``{"score", *EXTRA_KEYS}``, never raises."""
    global _failures
    no_prompt = prompt is None
    raw: float | None = None
    num_valid = 0
    error: str | None = None
    empty = not response.strip()
    try:
        rm = await _areward_fn(settings, router_address)
        if empty:  # nothing to judge; the config may say what an empty answer is worth
            raw = rm.empty_response_score
        else:
            result = (
                await rm.ascore_batch([prompt or PROMPT_PLACEHOLDER], [[response]], [reference])
            )[0]
            raw, num_valid = result.scores[0] if result.scores else None, result.num_valid
            error = result.error
    except Exception as e:  # noqa: BLE001 - a reward must never stop training (config errors too)
        error = f"{type(e).__name__}: {e}"
    if raw is None and empty:
        raw = 1.0  # an empty answer is the policy's fault: lowest score, not the neutral fallback
    failed = raw is None
    if failed:
        _failures += 1
        if _failures <= 10 or _failures % 100 == 0:  # bounded logging: this runs per sample
            log.warning("grm judge failed (%d so far), fallback score: %s", _failures, error)
    return {
        "score": settings.fallback if raw is None else settings.scale(raw),
        "grm_raw": 0.0 if raw is None else float(raw),
        "grm_failed": int(failed),
        "grm_num_valid": int(num_valid),
        "grm_no_prompt": int(no_prompt),
        "grm_empty": int(empty),
    }


# --------------------------------------------------------------------------- reward function


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float | int]:
    """verl custom reward function: the judge's score of one response.

    ``ground_truth`` is the judge's reference answer; the prompt is read from ``extra_info``
    (``prompt_key``, else ``raw_prompt``, ``prompt``, ``question``). verl adds
    ``reward_router_address`` when it launched the judge; ``kwargs`` also carry the
    ``reward_kwargs`` of the config (see ``VerlSettings``).

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
        _reference(ground_truth),
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
        """verl reward manager that judges each response with the generative reward model.

        Settings come from ``config.reward.reward_kwargs`` (see ``VerlSettings``). The prompt is
        the sample's ``raw_prompt`` messages, else its decoded prompt tokens.

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
            self.reward_router_address = reward_router_address
            self.reward_model_tokenizer = reward_model_tokenizer

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
            reward_model = _plain(non_tensor.get("reward_model")) or {}
            reference = _reference(reward_model.get("ground_truth"))

            out = await _judge(
                prompt, response, reference, self.settings, self.reward_router_address
            )
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
