"""Engines: where judgments are generated. ``make_engine`` turns a spec into an engine.

Example:
    >>> from grm_plugin.engines import make_engine
    >>> make_engine("http://127.0.0.1:8000/v1").config.base_url
    'http://127.0.0.1:8000/v1'
"""

from __future__ import annotations

from ..config import (
    DefaultEngineConfig,
    OpenAIEngineConfig,
    TransformersEngineConfig,
    VLLMEngineConfig,
)
from .base import EngineError, GenerationRequest, JudgeEngine

EngineSpec = (
    JudgeEngine
    | OpenAIEngineConfig
    | TransformersEngineConfig
    | VLLMEngineConfig
    | DefaultEngineConfig
    | str
    | None
)

__all__ = ["EngineError", "EngineSpec", "GenerationRequest", "JudgeEngine", "make_engine"]


def make_engine(spec: EngineSpec) -> JudgeEngine:
    """Build an engine from an instance, a config, a URL, a model path / hub id, or None.

    None means the embedded demo judge (``pip install grm-plugin[demo]``).
    """
    if isinstance(spec, JudgeEngine):
        return spec
    if spec is None:
        spec = DefaultEngineConfig()
    if isinstance(spec, str):
        if spec.startswith(("http://", "https://")):
            spec = OpenAIEngineConfig(base_url=spec)
        else:
            spec = TransformersEngineConfig(model=spec)
    if isinstance(spec, OpenAIEngineConfig):
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(spec)
    if isinstance(spec, TransformersEngineConfig):
        return _transformers_engine(spec)
    if isinstance(spec, VLLMEngineConfig):
        from .vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    if isinstance(spec, DefaultEngineConfig):
        from ..default_judge import default_judge_path

        return _transformers_engine(spec.transformers_config(str(default_judge_path())))
    raise TypeError(f"cannot build an engine from {type(spec).__name__}")


def _transformers_engine(config: TransformersEngineConfig) -> JudgeEngine:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError(
            f"a local judge model needs torch and transformers ({e}): "
            "pip install torch==2.13.0 'grm-plugin[transformers]' (or use --server URL)"
        ) from e
    from .transformers_engine import TransformersEngine

    return TransformersEngine(config)
