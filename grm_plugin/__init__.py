"""grm-plugin: a generative reward model (DeepSeek-GRM / SPCT style) for RL frameworks.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> rm = GenerativeRewardFn("http://127.0.0.1:8000/v1", samples=4)  # doctest: +SKIP
    >>> rm.score("Name a prime.", ["7", "9"]).scores  # doctest: +SKIP
    [8.0, 2.5]
"""

from .config import (
    DefaultEngineConfig,
    JudgeConfig,
    OpenAIEngineConfig,
    SamplingConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)
from .deadline import Deadline
from .engines import EngineError, GenerationRequest, JudgeEngine, make_engine
from .meta_rm import MetaRewardModel
from .parsing import ParsedJudgment, parse_judgment
from .results import FailureKind, JudgmentResult, Sample
from .reward import GenerativeRewardFn

__version__ = "0.1.0"

__all__ = [
    "Deadline",
    "DefaultEngineConfig",
    "EngineError",
    "FailureKind",
    "GenerationRequest",
    "GenerativeRewardFn",
    "JudgeConfig",
    "JudgeEngine",
    "JudgmentResult",
    "MetaRewardModel",
    "OpenAIEngineConfig",
    "ParsedJudgment",
    "Sample",
    "SamplingConfig",
    "TransformersEngineConfig",
    "VLLMEngineConfig",
    "make_engine",
    "parse_judgment",
]
