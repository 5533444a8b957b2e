"""What SFT and RL share: loading the judge to train, LoRA, and saving a loadable folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .config import LoraSettings


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


def save_judge(model: Any, tokenizer: Any, out: Path, report: dict) -> Path:
    """Save a plain transformers folder (LoRA merged in) that ``GenerativeRewardFn(out)`` and
    ``grm-plugin eval --model out`` load like any model; ``report`` goes to ``spct_train.json``."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.padding_side = "left"  # what the judge engine generates with
    tokenizer.save_pretrained(tmp)
    (tmp / "spct_train.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def trainer_device_args(device: str) -> dict[str, Any]:
    """TrainingArguments for the device (no mixed precision on CPU)."""
    return {"use_cpu": device == "cpu", "bf16": device.startswith("cuda")}
