"""Rejective fine-tuning: trl's SFTTrainer on collected records, loss on the judgment only.

Each record becomes a conversational prompt-completion example (prompt: the judge messages as the
judge saw them; completion: the judgment), for which trl computes the loss on completion tokens
only. Hinted records keep the hinted prompt they were sampled with (``hinted: as_seen``): training
them under the plain prompt would teach the judge to reach the right ranking from a critique
that was written knowing the answer (and may cite the hint), a shortcut the paper warns about;
``hinted: drop`` leaves them out.

Example:
    >>> report = train_sft(read_rft_records("rft.jsonl"), "judge-sft")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._train import (
    load_base,
    peft_config,
    save_trained_judge,
    trainer_device_args,
    trl_config,
    work_dir,
)
from .collect import RFTRecord
from .config import SFTSettings


def sft_examples(records: Sequence[RFTRecord]) -> list[dict]:
    """Prompt-completion examples (trl's conversational format) from records."""
    return [{"prompt": r.messages[:-1], "completion": [r.messages[-1]]} for r in records]


def train_sft(
    records: Sequence[RFTRecord],
    out: str | Path,
    settings: SFTSettings | None = None,
    *,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> dict:
    """Fine-tune ``settings.base`` on ``records`` and save a judge folder at ``out``.

    With ``settings.save_steps``, a rerun after an interruption resumes from the last trainer
    checkpoint. ``callbacks``: more transformers ``TrainerCallback`` objects. Returns the
    training report (also saved as ``out/spct_train.json``).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = settings or SFTSettings()
    used = [r for r in records if settings.hinted == "as_seen" or not r.hinted]
    examples = sft_examples(used)
    if not examples:
        raise ValueError("no records to train on (all were hinted and hinted=drop, or none)")
    model, tok = load_base(settings.base, settings.device)
    out = Path(out)
    with work_dir(out, settings.save_steps) as work:
        args = trl_config(
            SFTConfig,
            dict(
                output_dir=work.path,
                num_train_epochs=settings.epochs,
                max_steps=settings.max_steps,
                learning_rate=settings.learning_rate,
                per_device_train_batch_size=settings.batch_size,
                gradient_accumulation_steps=settings.gradient_accumulation_steps,
                max_length=settings.max_length,
                completion_only_loss=True,
                logging_steps=1,
                report_to="none",
                seed=settings.seed,
                disable_tqdm=not progress,
                **work.args,
                **trainer_device_args(settings.device),
            ),
            settings.trl,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=tok,
            peft_config=peft_config(settings.lora),
            callbacks=list(callbacks) or None,
        )
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=work.resume_from)
        seconds = time.perf_counter() - started
        report = {
            "stage": "sft",
            "processes": trainer.accelerator.num_processes,  # accelerate launch
            "examples": len(examples),
            "hinted_examples": sum(r.hinted for r in used),
            "steps": result.global_step,
            "train_seconds": seconds,
            "train_loss": result.training_loss,
            "resumed_from": work.resume_from,
            "log_history": trainer.state.log_history,
            "settings": settings.model_dump(mode="json"),
        }
        save_trained_judge(trainer, tok, out, report, settings.base)
    return report
