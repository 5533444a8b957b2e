"""What SFT and RL share: loading the judge to train, LoRA, and saving a loadable folder."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import LoraSettings, RLSettings, SFTSettings


def resolve_base(base: str | None) -> str:
    """The base model spec: the given one, or the embedded default judge's GGUF file."""
    if base:
        return base
    from ..default_judge import default_judge_path

    return str(default_judge_path())


def load_base(base: str | None, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 for training; GGUF files are converted once and cached."""
    from ..engines.transformers_engine import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(resolve_base(base), device=device, dtype="float32")
    model.train()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{base}: the tokenizer has no chat template (use an instruct model)")
    return model, tok


def peft_config(lora: LoraSettings | None) -> Any:
    """A peft LoraConfig, or None for full fine-tuning."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def save_mode(settings: SFTSettings | RLSettings) -> str:
    """``settings.save``, or its default: the adapter alone when training LoRA, else merged."""
    return settings.save or ("adapter" if settings.lora is not None else "merged")


def mean_step_loss(log_history: list[dict[str, Any]]) -> float:
    """The mean training loss over the logged steps (one log per step: ``logging_steps=1``).

    Example:
        >>> mean_step_loss([{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}, {"train_loss": 0}])
        0.75
    """
    losses = [h["loss"] for h in log_history if "loss" in h]
    return sum(losses) / len(losses) if losses else float("nan")


def save_judge(
    model: Any,
    tokenizer: Any,
    out: Path,
    report: dict,
    accelerator: Any = None,
    *,
    save: str = "merged",
    base: str | None = None,
) -> Path:
    """Save the trained judge at ``out``, loadable by ``GenerativeRewardFn(out)`` and
    ``grm-plugin eval --model out``; ``report`` goes to ``spct_train.json``.

    ``save``: ``adapter``: ``out`` is the LoRA adapter, unmerged (``adapter.save_adapter``:
    bf16 safetensors and a manifest naming ``base``, what the model was trained from);
    ``merged``: a plain transformers folder with the LoRA merged in; ``both``: the merged folder
    with the adapter in ``out/adapter``. The adapter's manifest is added to ``report``.

    Under ``accelerate launch`` every process holds the same trained weights: only the main
    process (of ``accelerator``, the trainer's) writes, the others wait until it has, so no
    process renames the folder another one is still writing."""
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if save in ("adapter", "both"):
        from .adapter import save_adapter

        if not hasattr(model, "merge_and_unload"):
            raise ValueError(f"save: {save} needs a LoRA run (lora settings)")
        # into the caller's report too: run_stage returns it
        report["adapter"] = save_adapter(model, tmp / "adapter", base)
    if save in ("merged", "both"):
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.padding_side = "left"  # what the judge engine generates with
        tokenizer.save_pretrained(tmp)
    else:  # the adapter alone is the folder
        for f in (tmp / "adapter").iterdir():
            f.replace(tmp / f.name)
        (tmp / "adapter").rmdir()
    (tmp / "spct_train.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out


def save_trained_judge(
    trainer: Any,
    tokenizer: Any,
    out: Path,
    report: dict,
    base: str | None,
    sharded: bool = False,
    save: str = "merged",
) -> Path:
    """``save_judge`` for a trainer's model, from every process of the run.

    Sharded runs (FSDP, DeepSpeed ZeRO-3; ``sharded`` forces this path) hold no whole weights
    anywhere: every process takes part in ``trainer.save_model``, which gathers them (FSDP
    ``FULL_STATE_DICT``, ZeRO-3 ``zero3_save_16bit_model``) into one folder, and the main
    process merges a LoRA adapter from there into a fresh CPU copy of ``base``."""
    accelerator = trainer.accelerator
    if not (sharded or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return save_judge(trainer.model, tokenizer, out, report, accelerator, save=save, base=base)
    gathered = out.with_name(out.name + ".gathered")
    trainer.save_model(str(gathered))
    if accelerator.is_main_process:
        if (gathered / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(load_base(base, "cpu")[0], str(gathered))
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(gathered), dtype="float32")
        save_judge(model, tokenizer, out, report, save=save, base=base)
        shutil.rmtree(gathered, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out


def trl_config(config_class: type, ours: dict[str, Any], extra: dict[str, Any]) -> Any:
    """``config_class(**ours, **extra)``, where ``extra`` (a settings section's ``trl``) may only
    add fields: one that another setting sets, or that ``config_class`` lacks, is refused.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Args:
        ...     lr: float = 0.1
        ...     use_vllm: bool = False
        >>> trl_config(Args, {"lr": 0.5}, {"use_vllm": True})
        Args(lr=0.5, use_vllm=True)
        >>> trl_config(Args, {"lr": 0.5}, {"lr": 1.0})
        Traceback (most recent call last):
        ValueError: trl: ['lr'] are set by other settings of this section: set them there
    """
    import dataclasses

    taken = sorted(set(ours) & set(extra))
    if taken:
        raise ValueError(f"trl: {taken} are set by other settings of this section: set them there")
    unknown = sorted(set(extra) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"trl: {unknown} are not fields of trl's {config_class.__name__}")
    return config_class(**ours, **extra)


def trainer_device_args(device: str) -> dict[str, Any]:
    """TrainingArguments for the device (no mixed precision on CPU)."""
    return {"use_cpu": device == "cpu", "bf16": device.startswith("cuda")}


def checkpoints_path(out: str | Path) -> Path:
    """Where trainer checkpoints of a run saving to ``out`` go (``judge-sft.checkpoints``)."""
    p = Path(out)
    return p.with_name(p.name + ".checkpoints")


@dataclass
class WorkDir:
    """The trainer's output_dir, its save arguments and the checkpoint to resume from."""

    path: str
    args: dict[str, Any] = field(default_factory=dict)
    resume_from: str | None = None


@contextmanager
def work_dir(out: Path, save_steps: int) -> Iterator[WorkDir]:
    """``save_steps`` 0: a temporary folder, nothing saved. Otherwise checkpoints every
    ``save_steps`` steps (the last one kept) in ``checkpoints_path(out)``, resumed from when a
    run finds one there, and removed once the run has finished (the judge is saved by then)."""
    if save_steps <= 0:
        with tempfile.TemporaryDirectory(prefix="spct-") as tmp:
            yield WorkDir(tmp, {"save_strategy": "no"})
        return
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = checkpoints_path(out)
    ckpt.mkdir(parents=True, exist_ok=True)
    yield WorkDir(
        str(ckpt),
        {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1},
        get_last_checkpoint(str(ckpt)),
    )
    shutil.rmtree(ckpt, ignore_errors=True)


def keep_save_interval(save_steps: int) -> Any:
    """A trainer callback that checkpoints every ``save_steps`` steps also on a resumed run.

    Why: transformers restores ``save_steps`` from the checkpoint's ``trainer_state.json`` and
    only warns that the arguments differ, so a run resumed with a new interval kept the old one
    (the GSM8K rl run, resumed with 2 after starting with 5, saved at 10, 15, ...).
    """
    from transformers import TrainerCallback

    class KeepSaveInterval(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            state.save_steps = save_steps

    return KeepSaveInterval()


def run_stage(
    stage: str,
    trainer_class: type,
    config_class: type,
    settings: SFTSettings | RLSettings,
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    out: Path,
    *,
    config_args: dict[str, Any],
    trainer_kwargs: dict[str, Any],
    inputs: dict[str, Any],
    outcome: Callable[[Any, Any], dict[str, Any]],
    progress: bool,
) -> dict:
    """Train ``model`` on ``rows`` with a trl trainer, save the judge at ``out`` and return the
    report (also ``out/spct_train.json``).

    The trl config is ``config_args`` plus what every stage sets (learning rate, seed, per-step
    logging, ``work_dir``'s checkpointing, the device) and ``settings.trl``; a checkpoint left
    by an interrupted run is resumed from. The report holds the stage, its ``inputs`` counts,
    steps, time, ``outcome(trainer, train_result)`` (what the stage adds), the log history
    (restored from the checkpoint on a resumed run) and the settings.
    """
    from datasets import Dataset

    with work_dir(out, settings.save_steps) as work:
        args = trl_config(
            config_class,
            dict(
                output_dir=work.path,
                learning_rate=settings.resolved_learning_rate(),
                gradient_checkpointing=settings.gradient_checkpointing,
                logging_steps=1,
                report_to="none",
                seed=settings.seed,
                disable_tqdm=not progress,
                **config_args,
                **work.args,
                **trainer_device_args(settings.device),
            ),
            settings.trl,
        )
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config(settings.lora),
            **trainer_kwargs,
        )
        if settings.save_steps > 0:
            trainer.add_callback(keep_save_interval(settings.save_steps))
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=work.resume_from)
        seconds = time.perf_counter() - started
        report = {
            "stage": stage,
            "processes": trainer.accelerator.num_processes,  # accelerate launch
            **inputs,
            "steps": result.global_step,
            "train_seconds": seconds,
            "resumed_from": work.resume_from,
            **outcome(trainer, result),
            "log_history": trainer.state.log_history,
            "settings": settings.model_dump(mode="json"),
        }
        save_trained_judge(trainer, tokenizer, out, report, settings.base, save=save_mode(settings))
    return report
