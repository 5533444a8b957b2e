"""SPCT settings: one YAML file with ``judge``, ``collect``, ``sft`` and ``rl`` sections.

Example:
    >>> cfg = SPCTConfig.model_validate({"collect": {"samples": 4}, "rl": {"beta": 0.04}})
    >>> cfg.collect.samples, cfg.rl.group_size, cfg.rl.beta
    (4, 4, 0.04)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..config import JudgeConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectSettings(_Strict):
    """Rejective fine-tuning data: N judgments per item, only the correct ones kept."""

    samples: int = Field(3, ge=1, description="judgments per item (the paper: 3)")
    hint_retry: bool = Field(
        False, description="items with no correct judgment get one more round with a hint"
    )
    parse_retries: int = Field(
        0, ge=0, description="re-sampling rounds for unparsable judgments (0: counts are exact)"
    )
    chunk_size: int = Field(8, ge=1, description="items judged concurrently (fills engine batches)")


class LoraSettings(_Strict):
    """peft LoRA adapter; merged into the base weights when saving."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="peft target_modules")


class SFTSettings(_Strict):
    """trl SFTTrainer on collected records; the loss covers the judgment (assistant turn) only."""

    base: str | None = Field(
        None, description="model folder, .gguf file or hub id (None: the embedded default judge)"
    )
    lora: LoraSettings | None = Field(
        None, description="train a LoRA adapter (merged when saving) instead of all weights"
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: epochs)")
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=64, description="tokens per example (prompt + judgment)")
    hinted: Literal["as_seen", "drop"] = Field(
        "as_seen",
        description="records from the hinted retry: train on them with the hinted prompt they "
        "were sampled with, or leave them out",
    )
    device: str = Field("cpu", description="'cpu' or 'cuda'")
    seed: int = 0


class RLSettings(_Strict):
    """trl GRPOTrainer on the judge itself with the +1/-1 rule reward."""

    base: str | None = Field(
        None, description="the judge to train, e.g. the sft output (None: the default judge)"
    )
    steps: int = Field(50, ge=1)
    group_size: int = Field(4, ge=2, description="judgments sampled per prompt (the paper: 4)")
    prompts_per_step: int = Field(1, ge=1)
    beta: float = Field(0.08, ge=0.0, description="KL coefficient (the paper: 0.08)")
    learning_rate: float = Field(1e-6, gt=0)
    temperature: float = Field(1.0, gt=0)
    max_completion_length: int = Field(512, ge=8)
    lora: LoraSettings | None = None
    device: str = "cpu"
    seed: int = 0


class SPCTConfig(_Strict):
    """Everything ``grm-plugin spct`` reads from ``--config spct.yaml``."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    collect: CollectSettings = Field(default_factory=CollectSettings)
    sft: SFTSettings = Field(default_factory=SFTSettings)
    rl: RLSettings = Field(default_factory=RLSettings)

    @classmethod
    def load(cls, path: str | Path) -> SPCTConfig:
        """Read a YAML or JSON file."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"SPCT config not found: {p}")
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        try:
            return cls.model_validate(data or {})
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from e
