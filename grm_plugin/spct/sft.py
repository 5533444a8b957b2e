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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._train import load_base, run_stage
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
    from trl import SFTConfig, SFTTrainer

    settings = settings or SFTSettings()
    used = [r for r in records if settings.hinted == "as_seen" or not r.hinted]
    examples = sft_examples(used)
    if not examples:
        raise ValueError("no records to train on (all were hinted and hinted=drop, or none)")
    model, tok = load_base(settings.base, settings.device)
    return run_stage(
        "sft",
        SFTTrainer,
        SFTConfig,
        settings,
        model,
        tok,
        examples,
        Path(out),
        config_args=dict(
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            max_length=settings.max_length,
            completion_only_loss=True,
        ),
        trainer_kwargs={"callbacks": list(callbacks) or None},
        inputs={"examples": len(examples), "hinted_examples": sum(r.hinted for r in used)},
        outcome=lambda trainer, result: {"train_loss": result.training_loss},
        progress=progress,
    )
