"""trl adapter: a generative reward model as a ``GRPOTrainer`` / ``RLOOTrainer`` reward function.

``GRMReward`` is an object with an ``async def __call__``; trl (>= 1.16) detects that with
``trl.trainer.utils.is_async_callable`` and awaits it on its background event loop, so judge
requests overlap with other async reward functions. The contiguous completions of one prompt
(trl's GRPO group) are judged together, listwise, which gives scores that compare the members
of a group with each other; identical completions are judged once. What a score is worth and
what a failure or an empty completion gets is the ``grm_plugin.policy.RewardPolicy``, applied
by ``grm_plugin.group_rewards`` as in every adapter: by default a completion the judge could not
score gets ``None`` (trl leaves it out of that reward instead of stopping training).

This module does not import trl: it only follows trl's reward-function contract.

Example:
    >>> import asyncio
    >>> from grm_plugin.adapters.trl import GRMReward
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> reward = GRMReward(engine=RuleJudgeEngine())  # real use: a config file or server URL
    >>> asyncio.run(reward(prompts=["Say hi"] * 2, completions=["hi", "hello there"]))
    [0.2222222222222222, 1.0]
    >>> # trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=...)
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# absolute imports: this file is also collected as ``adapters/trl.py`` (doctests over adapters/)
from grm_plugin.cache import TRAINING_CACHE, with_training_cache
from grm_plugin.config import JudgeConfig, judge_config_from_env
from grm_plugin.engines import EngineSpec, JudgeEngine, make_engine
from grm_plugin.group_rewards import (
    Group,
    SampleReward,
    balanced_chunks,
    judge_groups,
    unjudged_groups,
)
from grm_plugin.policy import RewardPolicy, summarize
from grm_plugin.reward import GenerativeRewardFn, run_sync

log = logging.getLogger(__name__)

__all__ = ["GRMReward", "group_indices"]


def _content_text(content: Any) -> str:
    """Message content as text: strings pass; content blocks keep their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type") == "text"
        )
    return str(content)


def _prompt_for_judge(prompt: Any) -> Any:
    """trl prompt -> what the core accepts: a string or ``[{"role", "content": str}]``.

    Anything else is passed through unchanged, so the core reports it as a bad item (-> None).
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return [
            {"role": str(m.get("role", "user")), "content": _content_text(m.get("content"))}
            for m in prompt
        ]
    return prompt


def _completion_text(completion: Any) -> str:
    """Standard completions are strings; conversational ones are message lists, of which the
    assistant turns are what the policy wrote (tool results are not judged as its own text)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        parts = [
            _content_text(m.get("content"))
            for m in completion
            if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"
        ]
        return "\n".join(p for p in parts if p)
    return str(completion)


def group_indices(keys: Sequence[Any], size: int | None = None) -> list[range]:
    """Runs of contiguous equal keys, each in near-equal chunks of at most ``size`` (None: whole).

    Example:
        >>> [list(r) for r in group_indices(["a", "a", "a", "b", "a"], 2)]
        [[0, 1], [2], [3], [4]]
        >>> [list(r) for r in group_indices(["a", "a", "a", "b", "a"])]
        [[0, 1, 2], [3], [4]]
    """
    chunks: list[range] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            chunks += [
                range(start + c.start, start + c.stop) for c in balanced_chunks(i - start, size)
            ]
            start = i
    return chunks


class GRMReward:
    """A trl reward function backed by a generative reward model.

    Args:
        config: a ``JudgeConfig``, a dict, or a YAML/JSON file path. It is loaded and validated
            now (``JudgeConfig.coerce``); the judge itself is built on the first call (so the
            object pickles cheaply).
            With neither ``config`` nor ``engine``, the file in ``$GRM_PLUGIN_CONFIG`` is
            loaded, and without it construction fails naming the variable (the embedded demo
            judge is ``{"engine": {"type": "default"}}``, never a silent default).
        engine: the judge engine: a ``JudgeEngine``, a server URL, a model path, an engine
            config; overrides ``config.engine``. Where the reward must pickle (trl's
            ``AsyncGRPOTrainer``), give a URL, path or engine config rather than a live engine
            object: those are built again in the scoring process.
        name: the name trl logs under (``rewards/<name>/mean``) and the prefix of our metrics.
        group_size: None (default): the contiguous completions of one prompt (trl's whole
            GRPO group, ``num_generations``) are judged together; a number caps a judge call
            at that many distinct completions (near-equal chunks; 1 = pointwise).
        reference_column: dataset column whose value is the reference answer (if present).
        policy: a ``RewardPolicy`` (or its dict, the ``policy:`` mapping of the other
            adapters' settings): scale (``unit`` [0, 1] by default, ``raw``,
            ``sum``, a picklable function), failure (``abstain`` = ``None`` by default, or a
            fallback value), empty completion (the lowest score by default).
        log_judgments: send principles/critiques to trl's completions table (``log_extra``).
        **judge_kwargs: ``GenerativeRewardFn`` options (``samples``, ``temperature``, ...),
            only with ``engine`` and no ``config``.

    Example:
        >>> from grm_plugin.testing import RuleJudgeEngine
        >>> reward = GRMReward(engine=RuleJudgeEngine(), policy={"scale": "raw"})
        >>> reward.score(["Say hi"], [[{"role": "assistant", "content": "hello"}]])
        [6.0]
    """

    def __init__(
        self,
        config: JudgeConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        engine: EngineSpec = None,
        name: str = "grm",
        group_size: int | None = None,
        reference_column: str | None = "reference",
        policy: RewardPolicy | Mapping[str, Any] | None = None,
        log_judgments: bool = True,
        **judge_kwargs: Any,
    ) -> None:
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if config is not None and judge_kwargs:
            raise TypeError(
                f"give judge options in the config, not as arguments: {sorted(judge_kwargs)}"
            )
        if config is None and engine is None:
            if judge_kwargs:
                raise TypeError(
                    f"judge options {sorted(judge_kwargs)} need an engine (or put them in a config)"
                )
            config = judge_config_from_env("trl GRMReward (pass a config or an engine)")
        if judge_kwargs:  # a misspelt option fails here, not silently on the first call
            inspect.signature(GenerativeRewardFn).bind(engine, **judge_kwargs)
        self.config: JudgeConfig | None = None if config is None else JudgeConfig.coerce(config)
        self.engine = engine
        self.judge_kwargs = judge_kwargs
        self.__name__ = name  # trl's get_callable_name() reads this
        self.group_size = group_size
        self.reference_column = reference_column
        self.policy = (
            policy
            if isinstance(policy, RewardPolicy)
            else RewardPolicy.model_validate(policy or {})
        )
        self.log_judgments = log_judgments
        self._rm: GenerativeRewardFn | None = None
        self._failures = 0

    # ------------------------------------------------------------------------------- judge

    @property
    def rm(self) -> GenerativeRewardFn:
        """The judge, built on first use (in the process that scores, e.g. trl's child)."""
        if self._rm is None:
            if self.config is not None:
                engine = self.engine
                if engine is not None and not isinstance(engine, JudgeEngine):
                    engine = make_engine(engine)
                config = with_training_cache(self.config)
                self._rm = GenerativeRewardFn.from_config(config, engine=engine)
            else:
                self._rm = GenerativeRewardFn(self.engine, **self.judge_kwargs)
                self._rm.cache_config = TRAINING_CACHE
        return self._rm

    def __getstate__(self) -> dict[str, Any]:
        # the built judge may hold clients, threads or model weights: rebuild it after unpickling
        state = self.__dict__.copy()
        state["_rm"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"GRMReward(name={self.__name__!r}, group_size={self.group_size}, "
            f"policy={self.policy!r})"
        )

    # ------------------------------------------------------------------------------- trl API

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """trl's reward contract: one reward (or None) per completion, never an exception."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} completions")
        refs = kwargs.get(self.reference_column) if self.reference_column else None
        references = [self.policy.reference(r) for r in refs] if refs is not None else [None] * n
        judge_prompts = [_prompt_for_judge(p) for p in prompts]
        texts = [_completion_text(c) for c in completions]

        # a judge call needs one prompt and one reference; trl puts a prompt's G completions
        # next to each other, but a process may hold only part of a group: we group what is
        # contiguous
        keys = [
            (json.dumps(p, sort_keys=True, default=str), r)
            for p, r in zip(judge_prompts, references, strict=True)
        ]
        runs = group_indices(keys)
        groups = [Group(judge_prompts[r[0]], [texts[i] for i in r], references[r[0]]) for r in runs]
        try:
            rm = self.rm
        except Exception as e:  # noqa: BLE001 - e.g. the judge cannot be built: never stop training
            log.exception("GRM judge could not be built")
            judged = unjudged_groups(self.policy, groups, f"{type(e).__name__}: {e}")
        else:
            # the judge config's deadline.batch bounds the whole call (unjudged: timeout)
            judged = await judge_groups(rm, self.policy, groups, max_size=self.group_size)
        samples = [s for group in judged for s in group]  # runs are contiguous, in order
        self._log(kwargs, samples)
        return [s.value.value for s in samples]

    def _log(self, kwargs: Mapping[str, Any], samples: list[SampleReward]) -> None:
        """Metrics via trl's ``log_metric`` and table columns via ``log_extra`` (when given)."""
        name = self.__name__
        values = [s.value for s in samples]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            # the policy's keys, as rates over this call; grm_raw only when something scored
            # (trl averages every value it is given, and a NaN would poison it)
            for key, rate in summarize(values).items():
                log_metric(f"{name}/{key}", rate)
        errors = [v.error or "" for v in values]
        log_extra = kwargs.get("log_extra")
        if self.log_judgments and callable(log_extra):
            log_extra(f"{name}_principles", [s.principles for s in samples])
            log_extra(f"{name}_critique", [s.critique for s in samples])
            log_extra(f"{name}_error", errors)
        failed = [v for v in values if v.failed]
        if failed:
            self._failures += len(failed)
            log.warning(
                "GRM judge gave no score to %d of %d completions (%d so far; first error: %s)",
                len(failed),
                len(values),
                self._failures,
                failed[0].error,
            )

    def score(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """Synchronous twin of ``__call__`` (for evaluation scripts)."""
        return run_sync(self(prompts, completions, **kwargs))

    async def aclose(self) -> None:
        """Release the judge's engine, if it was built."""
        if self._rm is not None:
            await self._rm.aclose()
