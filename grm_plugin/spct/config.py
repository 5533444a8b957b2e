"""SPCT settings: one YAML file with ``judge``, ``make_pairs``, ``collect``, ``sft`` and ``rl``
sections.

Example:
    >>> cfg = SPCTConfig.model_validate({"collect": {"samples": 4}, "rl": {"beta": 0.04}})
    >>> cfg.collect.samples, cfg.rl.group_size, cfg.rl.beta
    (4, 4, 0.04)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import EngineConfig, JudgeConfig, load_mapping
from .hack_negatives import HackNegatives


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MakePairsSettings(_Strict):
    """Judge items from problems with a reference answer: sample solutions from a policy model,
    check their final answers, pair a right one with a wrong one."""

    engine: EngineConfig | None = Field(
        None, description="the policy that writes solutions (None: the judge section's engine)"
    )
    samples: int = Field(4, ge=1, description="solutions sampled per problem")
    temperature: float = Field(0.8, ge=0.0, description="policy sampling temperature")
    max_new_tokens: int = Field(
        256, ge=16, description="tokens per solution (the embedded engine caps at 256)"
    )
    instruction: str = Field(
        "Solve this math problem. Think step by step in a few short lines, then write the "
        'final answer as a number on the last line, as "A: <number>".\n\n{question}',
        description="the policy's user message; {question} is replaced by the problem",
    )
    checker: str = Field(
        "numeric", description="answer checker: a registered name or 'module:attribute'"
    )
    id_field: str = "id"
    question_field: str = "question"
    answer_field: str = Field("answer", description="the reference final answer")
    solution_field: str | None = Field(
        "solution", description="reference solution, used when no sample is right (None: none)"
    )
    reference_format: str = Field(
        "{solution}\nA: {answer}",
        description="how the reference solution is written as a response ({solution}, {answer})",
    )
    source: str = Field(
        "make-pairs", description="items' source: <source>-model-vs-model or -reference-vs-model"
    )
    chunk_size: int = Field(8, ge=1, description="problems sampled concurrently")
    seed: int = Field(0, description="which right/wrong sample is paired, and best's position")


class CollectSettings(_Strict):
    """Rejective fine-tuning data: N judgments per item, only the correct ones kept."""

    samples: int = Field(3, ge=1, description="judgments per item (the paper: 3)")
    hint_retry: bool = Field(
        False, description="items with no correct judgment get one more round with a hint"
    )
    hint_samples: int | None = Field(
        None,
        ge=1,
        description="judgments drawn in the hinted round (None: samples). The paper retries "
        "once with the hint; we draw N and keep every correct one",
    )
    parse_retries: int = Field(
        0, ge=0, description="re-sampling rounds for unparsable judgments (0: counts are exact)"
    )
    chunk_size: int = Field(8, ge=1, description="items judged concurrently (fills engine batches)")
    drop_too_easy: bool = Field(
        True,
        description="keep no record of an item whose N judgments were all correct (the paper: "
        "too easy to teach anything); false keeps them",
    )
    hack_negatives: HackNegatives | None = Field(
        None,
        description="add a master-key and a self-praise response to each item as wrong "
        "candidates, so the trained judge learns to reject them: append (to the item's own "
        "responses) or pairs (new two-response items, the best response and one hack); true "
        "means append (grm_plugin.spct.hack_negatives)",
    )

    @field_validator("hack_negatives", mode="before")
    @classmethod
    def _hack_negatives_flag(cls, v: Any) -> Any:
        # the field was a bool before it had two ways; true keeps meaning what it meant
        if v is True:
            return HackNegatives.APPEND
        return None if v is False else v


class LoraSettings(_Strict):
    """peft LoRA adapter; saved unmerged, merged, or both (``save`` of the section)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="peft target_modules")


SaveMode = Literal["adapter", "merged", "both"]
_SAVE_HELP = (
    "adapter: the LoRA adapter unmerged (peft, bf16 safetensors, spct_adapter.json manifest; "
    "loads onto its base); merged: a plain model folder; both: merged, adapter in <out>/adapter "
    "(None: adapter with lora, else merged)"
)


class _TrainsJudge(_Strict):
    """What ``sft`` and ``rl`` share: LoRA by default, the learning rate that goes with the kind of
    training, gradient checkpointing, and how the judge is saved.

    ``gradient_checkpointing`` (recompute activations in the backward pass: less memory, slower
    steps) is each section's own default.

    LoRA is the default because full fine-tuning of even the 0.5B judge peaks at 11 GiB on a CPU
    (weights, gradients and Adam state in float32), twice LoRA's, and its steps are slower
    (``benchmarks/results/spct_train_cost.md``). ``lora: null`` trains every weight.
    """

    #: the learning rate when none is set: (with LoRA, with every weight trained)
    DEFAULT_LEARNING_RATES: ClassVar[tuple[float, float]]

    lora: LoraSettings | None = Field(
        default_factory=LoraSettings,
        description="the LoRA adapter to train (null: train every weight, full fine-tuning)",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="None: the section's default for LoRA or for full fine-tuning"
    )
    save: SaveMode | None = Field(None, description=_SAVE_HELP)
    device: str = Field("cpu", description="'cpu' or 'cuda'")
    save_steps: int = Field(
        0,
        ge=0,
        description="trainer checkpoint every N steps in <out>.checkpoints, resumed by a rerun "
        "(0: none)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _adapter_needs_lora(self) -> _TrainsJudge:
        if self.save in ("adapter", "both") and self.lora is None:
            raise ValueError(f"save: {self.save} needs lora (full fine-tuning has no adapter)")
        return self

    def resolved_learning_rate(self) -> float:
        """``learning_rate``, or the default for LoRA or full fine-tuning.

        Example:
            >>> lora, full = SFTSettings(), SFTSettings(lora=None)
            >>> lora.resolved_learning_rate(), full.resolved_learning_rate()
            (0.0001, 1e-05)
        """
        if self.learning_rate is not None:
            return self.learning_rate
        with_lora, full = self.DEFAULT_LEARNING_RATES
        return with_lora if self.lora is not None else full


class SFTSettings(_TrainsJudge):
    """trl SFTTrainer on collected records; the loss covers the judgment (assistant turn) only."""

    base: str | None = Field(
        None,
        description="model folder, .gguf file, hub id, or a LoRA adapter folder (merged into "
        "its base in memory) (None: the embedded default judge)",
    )
    DEFAULT_LEARNING_RATES: ClassVar[tuple[float, float]] = (1e-4, 1e-5)

    general_data: str | None = Field(
        None,
        description='general instruction data mixed into RFT: chat JSONL, {"messages": [...]} '
        "per line, trained on its last (assistant) turn (the paper: -5 points without it)",
    )
    general_ratio: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="share of the SFT set that is general data (at most what the file holds); "
        "drawn by sha256(seed, line id): the same lines every run",
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: epochs)")
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=64, description="tokens per example (prompt + judgment)")
    # off, unlike trl: one example per step fits easily, and recomputing the forward pass made
    # the 0.5B judge's steps 1.2x slower for 1.9 GiB less (spct_train_cost.md)
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower steps"
    )
    hinted: Literal["as_seen", "drop"] = Field(
        "as_seen",
        description="records from the hinted retry: train on them with the hinted prompt they "
        "were sampled with, or leave them out",
    )
    min_judgment_chars: int = Field(
        0,
        ge=0,
        description="records whose judgment is shorter are left out (0: none): a bare score "
        "line that names the right response by chance teaches the format, not the judging",
    )
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="more trl SFTConfig fields, passed as they are "
        "(e.g. warmup_steps: 10); "
        "a field set by another key of this section, or not in SFTConfig, is refused",
    )


class RLSettings(_TrainsJudge):
    """trl GRPOTrainer on the judge itself with the +1/-1 rule reward."""

    base: str | None = Field(
        None,
        description="the judge to train, e.g. the sft output: a model folder or a LoRA adapter "
        "folder (merged in memory; a saved adapter is stacked onto it) (None: the default judge)",
    )
    steps: int = Field(50, ge=1)
    group_size: int = Field(4, ge=2, description="judgments sampled per prompt (the paper: 4)")
    prompts_per_step: int = Field(1, ge=1)
    beta: float = Field(0.08, ge=0.0, description="KL coefficient (the paper: 0.08)")
    DEFAULT_LEARNING_RATES: ClassVar[tuple[float, float]] = (1e-5, 1e-6)
    # The paper trains with GRPO's own objective (its rule reward + KL 0.08, no format reward);
    # trl 1.16 defaults to loss_type "dapo" (token-level normalization over the batch), so the
    # loss is stated here: "grpo" (per-sequence length normalization, group-std scaled
    # advantages) is our default, the other trl losses are one word away.
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "grpo", description="trl GRPOConfig.loss_type (the paper: GRPO; trl's default: dapo)"
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the group's reward std (GRPO), or not"
    )
    # The paper gives no RL sampling temperature (it votes at 0.5 at inference); 1.0 samples
    # the judge's own distribution, the usual on-policy choice and trl's default.
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the judgments")
    max_completion_length: int = Field(512, ge=8)
    # on, as in trl: a step holds group_size prompts plus judgments and their logits over the
    # whole vocabulary; without it even LoRA RL of the 0.5B judge passed 18 GiB (spct_train_cost.md)
    gradient_checkpointing: bool = Field(
        True, description="recompute activations in the backward pass: less memory, slower steps"
    )
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="more trl GRPOConfig fields, passed as they are "
        "(e.g. use_vllm: true, vllm_mode: colocate); "
        "a field set by another key of this section, or not in GRPOConfig, is refused",
    )


class SPCTConfig(_Strict):
    """Everything ``grm-plugin spct`` reads from ``--config spct.yaml``."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    make_pairs: MakePairsSettings = Field(default_factory=MakePairsSettings)
    collect: CollectSettings = Field(default_factory=CollectSettings)
    sft: SFTSettings = Field(default_factory=SFTSettings)
    rl: RLSettings = Field(default_factory=RLSettings)

    @classmethod
    def load(cls, path: str | Path) -> SPCTConfig:
        """Read a YAML or JSON file."""
        data = load_mapping(path, what="SPCT config")
        try:
            return cls.model_validate(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
