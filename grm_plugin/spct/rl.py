"""Rule-based online RL: trl's GRPOTrainer on the judge itself, rewarded by ``spct_rule_reward``.

Every training row is a judge prompt built by ``GenerativeRewardFn.judge_messages`` (the
production template and truncation) with a freshly shuffled response order and fence code; trl
samples ``group_size`` judgments of it and the rule reward scores each +1/-1 from the row's
``order``, ``best`` / ``rating`` columns.

The loss (``loss_type``, GRPO's by default, not trl's "dapo"), reward scaling and sampling
temperature are stated settings, and the report records what trl ran with (``trl_args``). A
group whose judgments all got the same reward (all +1, or all -1: e.g. nothing parses) has zero
advantage and teaches nothing; the share of such groups is logged per step
(``spct/zero_variance_groups``, from trl's ``frac_reward_zero_std``), and a step where it is 1
is warned about: it cannot learn.

Example:
    >>> report = train_rl(items, "judge-rl", RLSettings(steps=10))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines.base import EngineError, GenerationRequest, JudgeEngine
from ..reward import GenerativeRewardFn
from ._train import load_base, run_stage
from .config import RLSettings
from .items import SPCTItem
from .rule import spct_rule_reward

log = logging.getLogger(__name__)

#: per-step share of groups whose rewards were all equal (no learning signal)
ZERO_VARIANCE_KEY = "spct/zero_variance_groups"


class ZeroVarianceMonitor:
    """Reads trl's per-step share of zero-variance reward groups from the training logs, keeps
    it per step and warns when every group of a step had equal rewards.

    Example:
        >>> m = ZeroVarianceMonitor()
        >>> m.observe(1, {"frac_reward_zero_std": 0.5}), m.observe(2, {"loss": 0.1})
        (0.5, None)
        >>> m.observe(3, {"frac_reward_zero_std": 1.0, "spct/parse_rate": 0.0})
        1.0
        >>> m.shares, m.steps_without_signal
        ({1: 0.5, 3: 1.0}, 1)
    """

    def __init__(self) -> None:
        self.shares: dict[int, float] = {}
        self.steps_without_signal = 0

    def observe(self, step: int, logs: dict[str, Any]) -> float | None:
        share = logs.get("frac_reward_zero_std")
        if share is None:
            return None
        share = float(share)
        self.shares[step] = share
        if share >= 1.0 - 1e-9:
            self.steps_without_signal += 1
            log.warning(
                "step %d: every group's judgments got equal rewards (accuracy %s, parse rate %s):"
                " zero advantage, this step cannot learn",
                step,
                logs.get("spct/accuracy"),
                logs.get("spct/parse_rate"),
            )
        return share

    def callback(self) -> Any:
        """A transformers ``TrainerCallback`` that feeds this monitor and adds the share to the
        step's entry of the trainer's log history."""
        from transformers import TrainerCallback

        monitor = self

        class _ZeroVarianceCallback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                share = monitor.observe(state.global_step, logs or {})
                history = state.log_history
                # Trainer.log appends the step's entry just before calling on_log
                if share is not None and history and history[-1].get("step") == state.global_step:
                    history[-1][ZERO_VARIANCE_KEY] = share

        return _ZeroVarianceCallback()


class _PromptOnlyEngine(JudgeEngine):
    """Counts tokens with the model's tokenizer so prompts are truncated as the judge would;
    never generates (trl does)."""

    def __init__(self, tokenizer: Any, context_window: int | None) -> None:
        self.tokenizer = tokenizer
        self.context_window = context_window

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, request: GenerationRequest) -> list[str]:
        raise EngineError("prompt-building engine: it does not generate")


def rl_rows(
    rm: GenerativeRewardFn, items: Sequence[SPCTItem], rows: int, seed: int = 0
) -> list[dict]:
    """``rows`` training rows cycling through ``items`` (reshuffled each pass), each a judge
    prompt with a fresh random response order plus the columns the rule reward reads."""
    if not items:
        raise ValueError("no items to train on")
    rng = random.Random(seed)
    out: list[dict] = []
    pool: list[SPCTItem] = []
    while len(out) < rows:
        if not pool:
            pool = list(items)
            rng.shuffle(pool)
        item = pool.pop()
        n = len(item.responses)
        order = rng.sample(range(n), n)
        out.append(
            {
                "prompt": rm.judge_messages(item.prompt, item.responses, order),
                "order": order,
                "best": item.best,
                "rating": item.rating,
                "n": n,
                "responses": item.responses,
                "id": item.id,
            }
        )
    return out


def train_rl(
    items: Sequence[SPCTItem],
    out: str | Path,
    settings: RLSettings | None = None,
    *,
    principles: str | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> dict:
    """GRPO on the judge ``settings.base`` (e.g. the SFT output) and save it at ``out``.

    With ``settings.save_steps``, a rerun after an interruption resumes from the last trainer
    checkpoint (the rows are the same: they come from ``settings.seed``). Returns the training
    report (also ``out/spct_train.json``), with per-step rule accuracy, parse rate and share of
    zero-variance groups (``spct/accuracy``, ``spct/parse_rate``, ``spct/zero_variance_groups``)
    in its log history, and ``steps_without_signal``: steps where every group had equal rewards.
    """
    from trl import GRPOConfig, GRPOTrainer

    settings = settings or RLSettings()
    model, tok = load_base(settings.base, settings.device)
    window = getattr(model.config, "max_position_embeddings", None)
    prompt_rm = GenerativeRewardFn(
        _PromptOnlyEngine(tok, window),
        max_new_tokens=max_new_tokens or settings.max_completion_length,
        principles=principles,
    )
    per_step = settings.group_size * settings.prompts_per_step
    # under `accelerate launch` each step takes prompts_per_step rows on every process: enough
    # rows that no row (and so no response order) is seen twice
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    rows = rl_rows(
        prompt_rm, items, settings.steps * settings.prompts_per_step * processes, settings.seed
    )
    return run_stage(
        "rl",
        GRPOTrainer,
        GRPOConfig,
        settings,
        model,
        tok,
        rows,
        Path(out),
        config_args=dict(
            max_steps=settings.steps,
            per_device_train_batch_size=per_step,
            num_generations=settings.group_size,
            beta=settings.beta,
            temperature=settings.temperature,
            loss_type=settings.loss_type,
            scale_rewards=settings.scale_rewards,
            max_completion_length=settings.max_completion_length,
        ),
        trainer_kwargs={
            "reward_funcs": [spct_rule_reward],
            "callbacks": [ZeroVarianceMonitor().callback(), *callbacks],
        },
        inputs={"items": len(items), "rows": len(rows)},
        outcome=_rl_outcome,
        progress=progress,
    )


def _rl_outcome(trainer: Any, result: Any) -> dict[str, Any]:
    """What the RL report adds: steps without signal and the loss settings trl ran with."""
    history = trainer.state.log_history  # restored from the checkpoint on a resumed run
    return {
        "steps_without_signal": sum(
            1 for h in history if h.get(ZERO_VARIANCE_KEY, 0.0) >= 1.0 - 1e-9
        ),
        "trl_args": {
            "loss_type": trainer.args.loss_type,
            "scale_rewards": trainer.args.scale_rewards,
            "temperature": trainer.args.temperature,
            "beta": trainer.args.beta,
        },
    }
