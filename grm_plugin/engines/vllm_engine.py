"""Judge with offline vLLM (``vllm.LLM``), sampling k judgments per prompt with ``n=k``.

vLLM needs a GPU; it is imported only when this engine is built. Experimental: no GPU has been
available to this project's CI yet, so this engine has never been run by our tests. The
``openai`` engine against ``vllm serve`` is the tested way to use vLLM.

Example:
    >>> eng = VLLMEngine(VLLMEngineConfig(model="Qwen/Qwen2.5-7B-Instruct"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import VLLMEngineConfig
from .base import EngineError, GenerationRequest, JudgeEngine
from .batching import MicroBatcher
from .errors import map_exceptions
from .transformers_engine import resolve_model_source


class VLLMEngine(JudgeEngine):
    """Concurrent requests are coalesced into one ``LLM.chat`` call (vLLM batches them); what a
    batch raises reaches callers as an ``EngineError`` (``batching.LOCAL_ERRORS``)."""

    def __init__(self, config: VLLMEngineConfig, max_batch_rows: int = 1024) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm engine needs `pip install grm-plugin[vllm]`") from e
        resolve_model_source(config.model)
        self.config = config
        kwargs = dict(
            model=config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            **config.extra,
        )
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        with map_exceptions({RuntimeError: EngineError}, "vLLM could not start (it needs a GPU)"):
            self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self.tokenizer = self.llm.get_tokenizer()
        self.context_window = self.llm.llm_engine.model_config.max_model_len
        self._batcher = MicroBatcher(self._generate_batch, max_rows=max_batch_rows, max_wait=0.02)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        params = [
            self._vllm.SamplingParams(
                n=r.n, temperature=r.temperature, max_tokens=r.max_tokens, seed=r.seed
            )
            for r in requests
        ]
        outs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outs]

    async def generate(self, request: GenerationRequest) -> list[str]:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
