"""The ``grm`` verl reward manager: the responses of one prompt (same ``uid``) judged together.

Importing this module needs verl (it is the part of the adapter that subclasses verl's
``RewardManagerBase``); the settings, the sample translation and the judging live in
``grm_plugin.adapters.verl``, which needs none. ``import verl`` imports it through the
``verl.plugins`` entry point (``grm = "grm_plugin.adapters.verl_manager:GRMRewardManager"``),
which registers the class as ``grm`` in every process, driver and Ray reward workers alike.

verl 0.9.1's ``register`` refuses a second class object under a taken name (it compares the
class objects), and running this module again (``importlib.reload``) makes a new class object
with the same ``module.qualname``: ``register_reloadable`` lets that one replace the earlier,
and still refuses any other class named ``grm``. Importing it again is a no-op, as for any
module.

Example (verl config)::

    reward.reward_manager.name=grm +reward.reward_kwargs.grm_config=judge.yaml
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import registry as verl_registry
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from grm_plugin.adapters.verl import (
    MANAGER_NAME,
    JudgeRequest,
    VerlJudging,
    VerlSettings,
    find_prompt,
    plain,
)
from grm_plugin.adapters.verl_group_actor import group_router

__all__ = ["GRMRewardManager", "register_reloadable"]

log = logging.getLogger(__name__)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_reloadable(name: str) -> Callable[[type[RewardManagerBase]], type[RewardManagerBase]]:
    """verl's ``register(name)``, except that a class with the same ``module.qualname`` as the
    registered one (this module run again) replaces it instead of raising.

    Example:
        >>> from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
        >>> get_reward_manager_cls("grm") is GRMRewardManager
        True
    """
    verl_register = verl_registry.register(name)

    def decorator(cls: type[RewardManagerBase]) -> type[RewardManagerBase]:
        earlier = verl_registry.REWARD_MANAGER.get(name)
        if earlier is not None and earlier is not cls and _qualified(earlier) == _qualified(cls):
            del verl_registry.REWARD_MANAGER[name]
        return verl_register(cls)

    return decorator


@register_reloadable(MANAGER_NAME)
class GRMRewardManager(RewardManagerBase):
    """verl reward manager: the responses of one prompt (same ``uid``) judged together.

    Settings come from ``config.reward.reward_kwargs`` (see ``VerlSettings``); the group's
    expected size is ``actor_rollout_ref.rollout.n`` unless ``rollout_n`` is set. The prompt is
    the sample's ``raw_prompt`` messages, else its decoded prompt tokens. Each instance owns
    its judging state (``VerlJudging``): two managers share no judge, batcher or tally.
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
        self.expected = self.settings.rollout_n or plain(rollout.get("n"))
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        self.judging = VerlJudging()
        workers = plain(reward_cfg.get("num_workers"))
        # several workers: a uid's samples meet in the job's group actor (one process)
        self._router = group_router(
            self.settings, reward_router_address, workers, self.expected, self.judging
        )
        if (
            self._router is None
            and isinstance(workers, int)
            and workers > 1
            and self.settings.chunk_size(self.expected) > 1
        ):
            log.warning(
                "grm reward manager: reward.num_workers=%d without a group actor (Ray not "
                "initialised, or group_actor=false): verl sends each sample to one worker, so a "
                "prompt's responses are judged together only when they reach the same worker. "
                "Set reward.num_workers=1 (judging is I/O-bound: one async worker suffices).",
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
        extra_info = plain(non_tensor.get("extra_info")) or {}
        sources = [non_tensor, extra_info if isinstance(extra_info, Mapping) else {}]
        prompt = find_prompt(sources, self.settings.prompt_key)
        if prompt is None and "prompts" in item.batch.keys():
            prompt_ids = item.batch["prompts"]  # left-padded
            n_prompt = int(attention_mask[: prompt_ids.shape[-1]].sum())
            if n_prompt > 0:
                text = await self.loop.run_in_executor(
                    None, self._decode, prompt_ids[prompt_ids.shape[-1] - n_prompt :]
                )
                prompt = text if text.strip() else None
        reward_model = plain(non_tensor.get("reward_model"))
        if reward_model is None and not self._warned_no_reference:
            self._warned_no_reference = True
            log.warning(
                "grm reward manager: the sample has no reward_model/ground_truth: verl's "
                "colocated reward path (reward_model.enable=True without "
                "enable_resource_pool=True) passes only prompts and responses, so the judge "
                "gets no reference answer"
            )
        ground_truth = (reward_model or {}).get("ground_truth")
        uid = plain(non_tensor.get("uid"))
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
            out = await self.judging.judge(request)
        return {"reward_score": out["score"], "reward_extra_info": out}
