"""Rule-based online RL: trl's GRPOTrainer on the judge itself, rewarded by ``spct_rule_reward``.

Every training row is a judge prompt built by ``GenerativeRewardFn.judge_messages`` (the
production template and truncation) with a freshly shuffled response order and fence code; trl
samples ``group_size`` judgments of it and the rule reward scores each +1/-1 from the row's
``order``, ``best`` / ``rating`` columns.

Example:
    >>> report = train_rl(items, "judge-rl", RLSettings(steps=10))  # doctest: +SKIP
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines.base import EngineError, GenerationRequest, JudgeEngine
from ..reward import GenerativeRewardFn
from ._train import load_base, peft_config, save_judge, trainer_device_args
from .config import RLSettings
from .items import SPCTItem
from .rule import spct_rule_reward


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
) -> dict:
    """GRPO on the judge ``settings.base`` (e.g. the SFT output) and save it at ``out``.

    Returns the training report (also ``out/spct_train.json``), with per-step rule accuracy and
    parse rate (``spct/accuracy``, ``spct/parse_rate``) in its log history.
    """
    from datasets import Dataset
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
    rows = rl_rows(prompt_rm, items, settings.steps * settings.prompts_per_step, settings.seed)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="spct-rl-") as work:
        args = GRPOConfig(
            output_dir=work,
            max_steps=settings.steps,
            per_device_train_batch_size=per_step,
            num_generations=settings.group_size,
            beta=settings.beta,
            learning_rate=settings.learning_rate,
            temperature=settings.temperature,
            max_completion_length=settings.max_completion_length,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=settings.seed,
            disable_tqdm=not progress,
            **trainer_device_args(settings.device),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[spct_rule_reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=peft_config(settings.lora),
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    report = {
        "stage": "rl",
        "items": len(items),
        "rows": len(rows),
        "steps": result.global_step,
        "train_seconds": seconds,
        "log_history": trainer.state.log_history,
        "settings": settings.model_dump(mode="json"),
    }
    save_judge(trainer.model, tok, out, report)
    return report
