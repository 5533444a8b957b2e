"""Rejective fine-tuning: trl's SFTTrainer on collected records, loss on the judgment only.

Each record becomes a conversational prompt-completion example (prompt: the judge messages as the
judge saw them; completion: the judgment), for which trl computes the loss on completion tokens
only. Hinted records keep the hinted prompt they were sampled with (``hinted: as_seen``): training
them under the plain prompt would teach the judge to reach the right ranking from a critique
that was written knowing the answer (and may cite the hint), a shortcut the paper warns about;
``hinted: drop`` leaves them out.

General instruction data (``general_data``: chat JSONL, the paper's RFT mix) is added as
``general_ratio`` of the set, drawn by ``general_examples``; the report counts it.

Example:
    >>> report = train_sft(read_rft_records("rft.jsonl"), "judge-sft")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ._train import load_base, mean_step_loss, run_stage
from .collect import RFTRecord
from .config import SFTSettings

log = logging.getLogger(__name__)


def sft_examples(records: Sequence[RFTRecord]) -> list[dict]:
    """Prompt-completion examples (trl's conversational format) from records."""
    return [{"prompt": r.messages[:-1], "completion": [r.messages[-1]]} for r in records]


class GeneralData(BaseModel):
    """What ``general_examples`` read and drew from a general instruction file."""

    lines: int = Field(0, description="usable conversations in the file")
    skipped: dict[str, int] = Field(default_factory=dict, description="unusable lines by reason")
    used: int = Field(0, description="conversations mixed into the SFT set")


def _conversation(line: str) -> tuple[str, list[dict[str, str]]] | str:
    """(id, messages) of one JSONL line, or why it cannot be used."""
    try:
        row = json.loads(line)
    except ValueError:
        return "not JSON"
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        return "no messages list of 2+ turns"
    if not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        return "a message without string role and content"
    if messages[-1]["role"] != "assistant":
        return "last turn is not the assistant's"
    # an explicit id keeps the draw stable when lines are edited; else the content is the id
    key = row.get("id")
    if key is None:
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return str(key), [{"role": m["role"], "content": m["content"]} for m in messages]


def general_examples(
    path: str | Path, judge_examples: int, ratio: float, seed: int = 0
) -> tuple[list[dict], GeneralData]:
    """Examples from the chat JSONL ``path`` making ``ratio`` of a set with ``judge_examples``
    judge examples (fewer when the file has fewer), and what was read.

    Lines are ranked by sha256(seed, id) (``id`` field, else the messages), and the first ones
    taken: the same lines on every run, and a larger set keeps the lines of a smaller one.
    Each becomes a prompt-completion example trained on its last (assistant) turn.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "general.jsonl"
        >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        >>> _ = f.write_text("\\n".join(
        ...     [json.dumps({"id": str(i), "messages": chat}) for i in range(9)] + ["{bad"]))
        >>> rows, read = general_examples(f, judge_examples=6, ratio=0.25)
        >>> len(rows), read.lines, read.skipped, read.used
        (2, 9, {'not JSON': 1}, 2)
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"general instruction data not found: {p}")
    read = GeneralData()
    found: dict[str, list[dict[str, str]]] = {}
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        got = _conversation(line)
        if isinstance(got, str):
            read.skipped[got] = read.skipped.get(got, 0) + 1
            continue
        found.setdefault(got[0], got[1])
    read.lines = len(found)
    want = round(judge_examples * ratio / (1.0 - ratio))
    ranked = sorted(found, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    chosen = ranked[: min(want, len(ranked))]
    read.used = len(chosen)
    rows = [{"prompt": found[k][:-1], "completion": [found[k][-1]]} for k in chosen]
    return rows, read


class TooLong(BaseModel):
    """Examples longer than ``max_length`` tokens, which trl truncates from the end."""

    max_length: int
    dropped: int = Field(0, description="prompt alone reaches max_length: no judgment token left")
    cut: int = Field(0, description="the judgment's end, its score line, is cut off")
    longest: int = Field(0, description="tokens in the longest example")


def too_long(examples: Sequence[dict], tokenizer: Any, max_length: int) -> TooLong:
    """Count the prompt-completion ``examples`` that ``max_length`` drops or cuts, tokenized
    with the chat template as the trainer does. Both lose what SPCT trains for (a judgment
    ending in scores), and trl does it without a word, so ``train_sft`` warns and reports it."""

    def tokens(messages: list[dict], prompt: bool) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = TooLong(max_length=max_length)
    for ex in examples:
        full = tokens(ex["prompt"] + ex["completion"], prompt=False)
        out.longest = max(out.longest, full)
        if tokens(ex["prompt"], prompt=True) >= max_length:
            out.dropped += 1
        elif full > max_length:
            out.cut += 1
    return out


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
    # a 2-response pair is named right half the time by chance, so a judge that decides at a
    # coin's rate keeps many bare score lines (results/spct_gsm8k: 55 of 103 records)
    long_enough = [r for r in used if len(r.messages[-1]["content"]) >= settings.min_judgment_chars]
    short, used = len(used) - len(long_enough), long_enough
    examples = sft_examples(used)
    if not examples:
        raise ValueError(
            "no records to train on (none given, all hinted with hinted=drop, or all shorter "
            "than min_judgment_chars)"
        )
    judge_count = len(examples)
    general = GeneralData()
    if settings.general_data:
        rows, general = general_examples(
            settings.general_data, judge_count, settings.general_ratio, settings.seed
        )
        examples += rows
    model, tok = load_base(settings.base, settings.device)
    lengths = too_long(examples, tok, settings.max_length)
    if lengths.dropped or lengths.cut:
        log.warning(
            "sft: max_length %d drops %d of %d examples (the prompt alone is that long) and cuts "
            "the end of the judgment, its scores, off %d more; the longest has %d tokens: raise "
            "sft.max_length",
            settings.max_length,
            lengths.dropped,
            len(examples),
            lengths.cut,
            lengths.longest,
        )
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
        inputs={
            "examples": len(examples),
            "judge_examples": judge_count,
            "hinted_examples": sum(r.hinted for r in used),
            "short_dropped": short,
            "general_examples": general.used,
            "general_data": general.model_dump() if settings.general_data else None,
            "too_long": lengths.model_dump(),
        },
        # not result.training_loss: on a resumed run that averages only the steps of this call
        # over all steps (0 when it resumed at the last step); the log history holds every step
        outcome=lambda trainer, result: {"train_loss": mean_step_loss(trainer.state.log_history)},
        progress=progress,
    )
