"""Configuration models shared by the core, the adapters and the CLI.

Every setting is a pydantic model so that one YAML/JSON file can configure a trl reward, an
OpenRLHF server and a verl reward function alike.

Example:
    >>> from grm_plugin.config import JudgeConfig
    >>> cfg = JudgeConfig.model_validate({"engine": {"type": "openai",
    ...     "base_url": "http://127.0.0.1:8000/v1", "model": "judge"}, "sampling": {"samples": 4}})
    >>> cfg.sampling.samples, cfg.engine.type
    (4, 'openai')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .cache import CacheConfig
from .deadline import Deadline
from .parsing import SCORE_MAX, SCORE_MIN

#: environment variable naming a JudgeConfig file (YAML/JSON), read by the adapters when no
#: config is passed to them (it must reach every worker process that scores)
CONFIG_ENV = "GRM_PLUGIN_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _refuse_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """Keys that moved elsewhere get an error naming their new place (not just 'extra')."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(
                    f"{section}.{old} is now {new} (one deadline object for the judge: "
                    f"deadline: {{request: s, item: s, batch: s}} at the top of the judge config)"
                )
    return data


class SamplingConfig(_Strict):
    """How judgments are sampled and combined."""

    samples: int = Field(1, ge=1, description="k judgments per item")
    temperature: float = Field(0.5, ge=0.0, description="used when samples > 1 (k = 1 is greedy)")
    max_new_tokens: int = Field(768, ge=16)
    shuffle: bool = Field(True, description="shuffle response order before each sample")
    parse_retries: int = Field(2, ge=0, description="re-sampling rounds for failed parses")
    retry_temperature: float = Field(0.7, gt=0.0, description="greedy retries would repeat")
    keep: int | None = Field(
        None, ge=1, description="samples kept by the meta RM (default k // 2, at least 1)"
    )
    seed: int | None = Field(
        None,
        description="seed for the response shuffles, the prompt's fence code and the judge's "
        "sampling: the same seed gives the same judge text on the transformers engine (a "
        "seeded request is generated on its own there, not batched with others); OpenAI-"
        "compatible servers get it as `seed` (reproducible where the server honours it)",
    )
    expected_scores: bool = Field(
        False,
        description="vote with each score's expected value under the judge's own distribution "
        "over 1..10 at that position (fewer ties; needs an engine with score distributions: "
        "transformers)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(data, "sampling", {"deadline": "deadline.item"})

    @model_validator(mode="after")
    def _keep_within_k(self) -> SamplingConfig:
        if self.keep is not None and self.keep > self.samples:
            raise ValueError(f"keep ({self.keep}) must be <= samples ({self.samples})")
        return self


class OpenAIEngineConfig(_Strict):
    """Any OpenAI-compatible server (vLLM, SGLang, transformers serve, hosted APIs)."""

    type: Literal["openai"] = "openai"
    base_url: str | list[str] = Field(
        ..., description="one URL or several replicas, e.g. http://127.0.0.1:8000/v1"
    )
    model: str | None = Field(None, description="served model name; the first listed if None")
    api_key: str = "EMPTY"
    max_retries: int = Field(3, ge=0, description="retries per request (within the deadline)")
    concurrency: int = Field(64, ge=1, description="requests in flight at once")
    n_mode: Literal["auto", "native", "parallel"] = Field(
        "auto", description="'native': one request with n=k; 'parallel': k requests; 'auto': probe"
    )
    context_window: int | None = Field(None, ge=256, description="tokens; for truncation")
    extra_body: dict = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(
            data, "engine", {"timeout": "deadline.request", "deadline": "deadline.item"}
        )

    @field_validator("base_url")
    @classmethod
    def _nonempty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("base_url needs at least one URL")
        return v


class LocalModelOptions(_Strict):
    """How a local model runs: every option of the transformers engine but its model, shared by
    ``TransformersEngineConfig`` and ``DefaultEngineConfig`` (the demo judge is a local model
    too, so ``serve --batch-size`` and every other lever work on it alike)."""

    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    adapter: str | None = Field(
        None,
        description="a peft LoRA adapter folder (e.g. `grm-plugin spct sft` output) applied to "
        "the model and merged in at load; needs peft",
    )
    batch_size: int = Field(8, ge=1, description="sequences generated together")
    batch_wait: float = Field(
        0.01,
        ge=0.0,
        le=10.0,
        description="seconds to wait for more concurrent requests to fill a batch "
        "(0: run what has arrived; larger: fuller batches under load, more latency when idle)",
    )
    context_window: int | None = Field(None, ge=256)
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="'int8': dynamic int8 quantization of the Linear layers (CPU, float32 "
        "weights); faster decoding on a CPU",
    )
    max_new_tokens: int | None = Field(
        None, ge=16, description="cap on new tokens per sample, below sampling.max_new_tokens"
    )
    stop_loops: bool = Field(
        True,
        description="stop a sample that repeats a segment back to back (3 times, 32+ tokens) "
        "and keep one copy, instead of running to the token limit",
    )
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="transformers' repetition penalty (1.0: off)"
    )
    score_prefill: bool = Field(
        True,
        description="a sample that ends without a score line is continued from its own text "
        "plus 'Final Scores: [[' (a few tokens) before any re-sampling",
    )
    constrain_scores: bool = Field(
        False,
        description="with score_prefill: the prefilled score line is decoded under its grammar "
        "(n integers 1-10, then the closing), and a sample whose score line does not parse "
        "(80 on a 1-10 scale, three scores for two responses) is continued from that line's "
        "start too: every prefilled sample parses (grm_plugin.engines.score_grammar)",
    )
    stream: bool = Field(
        False, description="write the judge's text to stderr as it is generated (batches of 1)"
    )


class TransformersEngineConfig(LocalModelOptions):
    """A local model: a folder, a hub id or a .gguf file (dequantized once and cached)."""

    type: Literal["transformers"] = "transformers"
    model: str


class VLLMEngineConfig(_Strict):
    """Offline vLLM (`vllm.LLM`); needs a GPU."""

    type: Literal["vllm"] = "vllm"
    model: str
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = None
    extra: dict = Field(default_factory=dict, description="more vllm.LLM keyword arguments")


class DefaultEngineConfig(LocalModelOptions):
    """The embedded demo judge (Qwen2.5-Coder-0.5B-Instruct from PyPI): weak, for trying things.

    Every ``TransformersEngineConfig`` option but ``model`` (the embedded one), with CPU-demo
    defaults.

    Example:
        >>> cfg = DefaultEngineConfig(batch_size=2, batch_wait=0.1)
        >>> t = cfg.transformers_config("/models/demo")
        >>> t.model, t.batch_size, t.batch_wait, t.quantize
        ('/models/demo', 2, 0.1, 'int8')
    """

    type: Literal["default"] = "default"
    # tuned for a CPU demo (benchmarks/first_command.py); same meaning as in transformers.
    # int8 vs float32 here: prefill 2.5x, decoding 1.24x faster; bfloat16 decoded 2x slower
    # (benchmarks/results/cpu_weights.md)
    quantize: Literal["none", "int8"] = Field(
        "int8", description=LocalModelOptions.model_fields["quantize"].description
    )
    max_new_tokens: int | None = Field(
        256, ge=16, description=LocalModelOptions.model_fields["max_new_tokens"].description
    )
    # the demo judge writes 100-point or extra scores in about 2 of 3 samples of the README's
    # first command, which then exited "no valid judgment" 1 run in 3
    # (benchmarks/results/first_command_reliability.md)
    constrain_scores: bool = Field(
        True, description=LocalModelOptions.model_fields["constrain_scores"].description
    )

    def transformers_config(self, model: str) -> TransformersEngineConfig:
        """The TransformersEngineConfig that runs the demo judge from ``model`` (its path)."""
        return TransformersEngineConfig(model=model, **self.model_dump(exclude={"type"}))


EngineConfig = Annotated[
    OpenAIEngineConfig | TransformersEngineConfig | VLLMEngineConfig | DefaultEngineConfig,
    Field(discriminator="type"),
]


class JudgeConfig(_Strict):
    """Everything needed to build a GenerativeRewardFn."""

    engine: EngineConfig = Field(default_factory=DefaultEngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    deadline: Deadline = Field(
        default_factory=Deadline, description="seconds per request, per item and per batch"
    )
    principles: str | None = Field(None, description="a user rubric added to the prompt")
    template: str = Field(
        "grm-plugin",
        description="judge prompt template: a preset (grm-plugin, deepseek-grm; optionally "
        "name@version) or a Jinja2 file path (see grm_plugin.templates)",
    )
    empty_response_score: float | None = Field(
        None, description="score for an empty response (None: flagged, not judged)"
    )
    minimal_content: bool = Field(
        False,
        description="a response with no content token (only punctuation, openers such as "
        "'Thought process:' or filler words; grm_plugin.content) gets the empty-response "
        "policy, flagged minimal_content: a defense against master-key responses",
    )
    cache: CacheConfig = Field(
        default_factory=CacheConfig,
        description="identical responses judged once; earlier judgments reused (grm_plugin.cache)",
    )

    @field_validator("empty_response_score")
    @classmethod
    def _empty_score_on_the_scale(cls, v: float | None) -> float | None:
        return checked_empty_response_score(v)

    @classmethod
    def load(cls, path: str | Path) -> JudgeConfig:
        """Read a YAML or JSON file."""
        return cls.model_validate(load_mapping(path, what="judge config"))

    @classmethod
    def coerce(cls, value: JudgeConfig | Mapping[str, Any] | str | Path | None) -> JudgeConfig:
        """The one way a config given as a model, a dict, or a YAML/JSON path (None: the
        defaults) becomes a validated ``JudgeConfig``; every constructor and adapter calls it.

        Example:
            >>> JudgeConfig.coerce({"sampling": {"samples": 2}}).sampling.samples
            2
            >>> JudgeConfig.coerce(None).engine.type
            'default'
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, (str, Path)):
            return cls.load(value)
        if isinstance(value, Mapping):
            return cls.model_validate(dict(value))
        raise TypeError(
            "a judge config is a JudgeConfig, a dict or a YAML/JSON path, "
            f"not {type(value).__name__}"
        )


def load_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping (an empty file: ``{}``); the one reader of config
    files, so every command refuses a missing file or a non-mapping the same way."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    text = p.read_text()
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {p}: the top level must be a mapping, not {type(data).__name__}")
    return data


def checked_empty_response_score(value: float | None) -> float | None:
    """``value`` if it is None or a finite score on the judge's 1-10 scale, else a ValueError
    (NaN would poison every mean it enters; 0 or 11 is a score no judgment can give).

    Example:
        >>> checked_empty_response_score(1.0)
        1.0
        >>> checked_empty_response_score(float("nan"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: empty_response_score must be None or a number from 1 to 10 ..., not nan
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"empty_response_score must be a number or None, not {value!r}")
    if not math.isfinite(value) or not SCORE_MIN <= value <= SCORE_MAX:
        raise ValueError(
            f"empty_response_score must be None or a number from {SCORE_MIN:g} to {SCORE_MAX:g} "
            f"(the judge's scale), not {value!r}"
        )
    return value


class MissingJudgeConfigError(RuntimeError):
    """No judge config was given and ``$GRM_PLUGIN_CONFIG`` is not set in this process."""


def judge_config_from_env(where: str) -> JudgeConfig:
    """The JudgeConfig named by ``$GRM_PLUGIN_CONFIG``; raises ``MissingJudgeConfigError``
    naming the variable when it is unset (a worker silently judging with the demo judge
    instead of the configured one is worse than a stopped run).

    Example:
        >>> os.environ.pop(CONFIG_ENV, None) and None
        >>> judge_config_from_env("verl reward worker")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        grm_plugin.config.MissingJudgeConfigError: verl reward worker: no judge config ...
    """
    path = os.environ.get(CONFIG_ENV, "").strip()
    if not path:
        raise MissingJudgeConfigError(
            f"{where}: no judge config was given and ${CONFIG_ENV} is not set in this process; "
            "set it where the workers run (or pass the config explicitly; the demo judge is "
            "engine: {type: default})"
        )
    return JudgeConfig.load(path)
