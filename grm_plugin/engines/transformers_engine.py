"""Judge with a local transformers model: a folder, a hub id, or a GGUF file.

GGUF files are dequantized by transformers, which is slow, so the result is saved once as
safetensors in the user cache and reloaded from there (well under a second for 0.5B).

Example:
    >>> cfg = TransformersEngineConfig(model="/models/judge.gguf")
    >>> eng = TransformersEngine(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..config import TransformersEngineConfig
from .base import EngineError, GenerationRequest, JudgeEngine
from .batching import MicroBatcher

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where grm-plugin keeps assembled and converted models (``GRM_PLUGIN_CACHE`` overrides)."""
    env = os.environ.get("GRM_PLUGIN_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("grm-plugin"))


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def resolve_model_source(spec: str) -> Path | str:
    """A local path that exists, or a hub id; anything else is a clear FileNotFoundError."""
    p = Path(spec).expanduser()
    if p.exists():
        return p
    if _looks_like_hub_id(spec) and not spec.endswith(".gguf"):
        return spec
    raise FileNotFoundError(
        f"judge model not found: {spec!r} is neither an existing path nor a hub id (org/name)"
    )


def converted_gguf_dir(gguf: Path) -> Path:
    """Cache folder for the safetensors conversion of ``gguf`` (keyed by path, size, mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "converted" / f"{gguf.stem}-{key[:16]}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder and return that folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_gguf_dir(gguf)
    if (target / "config.json").exists():
        return target
    log.info("dequantizing %s once into %s (slow)", gguf, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a GGUF-loaded model; its weights are already plain
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(target)
    return target


def load_model_and_tokenizer(spec: str, device: str = "cpu", dtype: str = "auto"):
    """Load (model, tokenizer); GGUF files are converted once and cached as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(spec)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if isinstance(source, Path) and source.is_file() and source.suffix == ".gguf":
        source = convert_gguf(source)
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    model.to(device)
    model.eval()
    return model, tok


class TransformersEngine(JudgeEngine):
    """Batched generation with ``model.generate``; concurrent requests are coalesced."""

    def __init__(self, config: TransformersEngineConfig) -> None:
        import torch

        self.config = config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.tokenizer = load_model_and_tokenizer(config.model, device, config.dtype)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.context_window = config.context_window or getattr(
            self.model.config, "max_position_embeddings", None
        )
        self._batcher = MicroBatcher(
            self._generate_batch, max_rows=config.batch_size, max_wait=config.batch_wait
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(f"{self.config.model} has no chat template: use an instruct model")
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 - some templates reject a system turn: fold it in
            merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in messages)}]
            return self.tokenizer.apply_chat_template(
                merged, tokenize=False, add_generation_prompt=True
            )

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        import torch

        texts = [self._render(r.messages) for r in requests for _ in range(r.n)]
        temperature = requests[0].temperature
        max_new = max(r.max_tokens for r in requests)
        out_texts: list[str] = []
        bs = self.config.batch_size
        for start in range(0, len(texts), bs):
            chunk = texts[start : start + bs]
            enc = self.tokenizer(
                chunk, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            kwargs = dict(max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id)
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :]
            out_texts += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        result, i = [], 0
        for r in requests:
            result.append(out_texts[i : i + r.n])
            i += r.n
        return result

    async def generate(self, request: GenerationRequest) -> list[str]:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
