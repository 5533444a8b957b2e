"""Judge with a local transformers model: a folder, a hub id, or a GGUF file.

GGUF files are dequantized by transformers, which is slow, so the result is saved once as
safetensors in the user cache and reloaded from there (well under a second for 0.5B).

One worker thread runs the model (``MicroBatcher``); the fast tokenizer is shared with the
callers' threads (``count_tokens``) and is not thread-safe (``RuntimeError: Already borrowed``),
so every use of it holds one lock.

Example:
    >>> cfg = TransformersEngineConfig(model="/models/judge.gguf")
    >>> eng = TransformersEngine(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, TextIO

from ..config import TransformersEngineConfig
from ..score_distribution import SCORE_VALUES, ScoreDistribution
from .base import EngineError, EngineHealth, GenerationRequest, JudgeEngine
from .batching import Job, MicroBatcher
from .score_grammar import ScoreListProcessor

log = logging.getLogger(__name__)

#: a segment repeated back to back over at least this many tokens (and 3 times) is a loop
LOOP_MIN_TOKENS = 32
#: longest repeated segment looked for, in tokens (a sentence or two)
LOOP_MAX_PERIOD = 64


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


def _conversion_lock(target: Path) -> Any:
    """An inter-process lock for converting into ``target`` (two processes starting the demo
    at once would both spend minutes converting and one would crash on the rename)."""
    from filelock import FileLock

    return FileLock(str(target) + ".lock")


def say(message: str) -> None:
    """A progress note for the user on stderr."""
    # the first run works for minutes before the judge writes anything: say what is happening
    # on stderr (the logging module is silent by default), keeping stdout for results
    print(f"grm-plugin: {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder and return that folder.

    Safe to run from several processes at once: one converts (under a file lock) while the
    others wait and reuse its result; a failed conversion leaves no temporary folder behind.
    """
    target = converted_gguf_dir(gguf)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target):
        if (target / "config.json").exists():  # a twin converted it while we waited
            return target
        # under the lock, leftovers of this target are from converters that died (kill -9)
        for stale in target.parent.glob(glob_escape(target.name) + ".tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        say(
            f"converting {gguf.name} to safetensors once, into {target} (about 1-3 min on a "
            "CPU; later runs load the converted copy in seconds)"
        )
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            _write_converted(gguf, tmp)
            try:
                tmp.rename(target)
            except OSError:
                # a converter that took no lock (another machine on a shared cache) finished
                # first: its folder is as good as ours
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"done in {time.monotonic() - started:.0f} s")
    return target


def _write_converted(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a GGUF-loaded model; its weights are already plain
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


#: written beside a LoRA adapter by ``grm-plugin spct``: its base model, sha256 and size
ADAPTER_MANIFEST = "spct_adapter.json"
#: peft's weights file in an adapter folder, the one the manifest's sha256 is of
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: the base named in a manifest when the adapter was trained on the embedded demo judge
DEFAULT_BASE = "default"
#: config fields an adapter's base must share with the model it is applied to
BASE_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_adapter_weights(folder: Path, manifest: dict[str, Any]) -> None:
    """ValueError unless the weights file is the one the manifest was written for: a partial
    copy or a replaced file would otherwise load and judge with wrong weights, silently."""
    weights = folder / manifest.get("weights", ADAPTER_WEIGHTS)
    want = manifest.get("sha256")
    if want is None:
        return
    have = file_sha256(weights) if weights.is_file() else "missing"
    if have != want:
        raise ValueError(
            f"the adapter's weights {weights} do not match its {ADAPTER_MANIFEST} (sha256 "
            f"{have[:12]}, manifest {want[:12]}): a partial copy or another file; copy the "
            "adapter folder again"
        )


def is_adapter_folder(spec: str | Path) -> bool:
    """A peft adapter folder (``adapter_config.json``) that is not a whole model."""
    p = Path(spec).expanduser()
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on: its manifest's ``base`` (``default``: the
    embedded judge), else peft's ``base_model_name_or_path``.

    Example:
        >>> import json, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "adapter_config.json").write_text(json.dumps(
        ...     {"base_model_name_or_path": "org/model"}))
        >>> adapter_base(d)
        'org/model'
    """
    folder = Path(adapter).expanduser()
    manifest = folder / ADAPTER_MANIFEST
    base = None
    if manifest.is_file():
        base = json.loads(manifest.read_text()).get("base")
    if not base:
        config = folder / "adapter_config.json"
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder}: the adapter names no base model: give the model too")
    if base == DEFAULT_BASE:
        from ..default_judge import default_judge_path

        return str(default_judge_path())
    return str(base)


def base_shape(config: Any) -> dict[str, Any]:
    """What an adapter's base must match (``BASE_SHAPE_KEYS`` of a transformers config)."""
    return {k: getattr(config, k, None) for k in BASE_SHAPE_KEYS}


def apply_adapter(model: Any, adapter: str | Path) -> Any:
    """``model`` with the LoRA adapter merged in (peft ``merge_and_unload``: no adapter cost
    per token). A base of another shape than the manifest records, or that the adapter's
    weights do not fit, is a ValueError naming both."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {folder} has no adapter_config.json")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModuleNotFoundError(
            f"loading the LoRA adapter {folder} needs peft ({e}): pip install peft"
        ) from e
    name = getattr(model.config, "_name_or_path", "the model")
    manifest = folder / ADAPTER_MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        check_adapter_weights(folder, recorded)
        want = recorded.get("base_shape") or {}
        have = base_shape(model.config)
        wrong = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
        if wrong:
            diff = ", ".join(f"{k} {a} (adapter) vs {b} (model)" for k, (a, b) in wrong.items())
            raise ValueError(
                f"the adapter {folder} was trained on another base than {name}: {diff}"
            )
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, modules not found
        raise ValueError(f"the adapter {folder} does not fit the base {name}: {e}") from e
    # peft loads for inference and freezes the base: a model trained further (spct --base an
    # adapter, full fine-tuning) must come back as trainable as it went in
    for n, p in merged.named_parameters():
        p.requires_grad_(trainable.get(n, p.requires_grad))
    return merged


def load_model_and_tokenizer(
    spec: str, device: str = "cpu", dtype: str = "auto", adapter: str | None = None
):
    """Load (model, tokenizer); GGUF files are converted once and cached as safetensors.

    ``adapter`` (a peft LoRA folder) is merged into the model; ``spec`` may itself be an
    adapter folder, whose base (``adapter_base``) is loaded first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if adapter is None and is_adapter_folder(spec):
        spec, adapter = adapter_base(spec), spec
    source = resolve_model_source(spec)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if isinstance(source, Path) and source.is_file() and source.suffix == ".gguf":
        source = convert_gguf(source)
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if adapter is not None:
        model = apply_adapter(model, adapter)
    model.to(device)
    model.eval()
    return model, tok


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the Linear layers (CPU, float32 weights): decoding on a CPU
    is bound by reading the weights, and int8 weights are a quarter of float32."""
    import warnings

    import torch

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("quantize='int8' needs float32 weights (dtype 'auto' or 'float32')")
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated for torchao, yet still the one that needs
        # no extra package and works on any CPU with fbgemm
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def loop_start(tokens: Sequence[int]) -> int | None:
    """Where a back-to-back repetition at the end of ``tokens`` begins its second copy, or None.

    A segment of p <= 64 tokens repeated over the last max(3p, 32) tokens is a loop; keeping
    ``tokens[:loop_start(tokens)]`` keeps one copy of it.

    Example:
        >>> loop_start([7, 8] + [1, 2, 3, 4] * 10)
        6
        >>> loop_start(list(range(100))) is None
        True
    """
    n = len(tokens)
    for p in range(1, LOOP_MAX_PERIOD + 1):
        w = max(3 * p, LOOP_MIN_TOKENS)
        if w > n:
            break
        tail = tokens[n - w :]
        if tail[p:] == tail[:-p]:
            start = n - w
            while start > 0 and tokens[start - 1] == tokens[start - 1 + p]:
                start -= 1  # the run began earlier: find its first copy
            return start + p
    return None


class _RowStopper:
    """A transformers StoppingCriteria (duck-typed): per row, stop when its caller gave up or
    its expiry passed (nobody reads the rest), or, with ``loops``, when the row started
    repeating itself (remembering where, to cut the repeats)."""

    def __init__(self, jobs: list[Job], prompt_len: int, loops: bool) -> None:
        self.jobs = jobs
        self.prompt_len = prompt_len
        self.loops = loops
        self.cut: dict[int, int] = {}  # row -> generated tokens to keep

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row, job in enumerate(self.jobs):
            if row in self.cut or job.cancelled or job.request.expiry.passed():
                done.append(True)
                continue
            if self.loops:
                start = loop_start(input_ids[row, self.prompt_len :].tolist())
                if start is not None:
                    self.cut[row] = start
                    done.append(True)
                    continue
            done.append(False)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _LockedStreamer:
    """Writes the text of a one-row generation to ``out`` as it is generated (transformers'
    TextStreamer, holding the tokenizer lock while it decodes)."""

    def __init__(self, tokenizer: Any, lock: threading.RLock, out: TextIO) -> None:
        from transformers import TextStreamer

        outer = self

        class _Streamer(TextStreamer):
            def put(self, value: Any) -> None:
                with lock:
                    super().put(value)

            def end(self) -> None:
                with lock:
                    super().end()

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                outer.out.write(text + ("\n" if stream_end else ""))
                outer.out.flush()

        self.out = out
        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class TransformersEngine(JudgeEngine):
    """Batched generation with ``model.generate``; concurrent requests are coalesced.

    Thread-safe: requests may come from any thread or event loop at once.
    """

    supports_assistant_prefix = True
    supports_score_distributions = True

    def __init__(self, config: TransformersEngineConfig, stream_to: TextIO | None = None) -> None:
        import torch

        self.config = config
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.tokenizer = load_model_and_tokenizer(
            config.model, device, config.dtype, adapter=config.adapter
        )
        if config.quantize == "int8":
            if device != "cpu":
                raise ValueError("quantize='int8' runs on the CPU only: set device='cpu'")
            self.model = quantize_int8(self.model)
            # dynamic int8 scales activations per forward pass, over every position in it: a
            # teacher-forced pass over a whole judgment does not reproduce the token-by-token
            # distributions the judge sampled from (measured on the embedded judge, 60 tokens:
            # KL 0.32-0.78 nats per token, argmax agreeing on 36-55; float32: 0.0000, 60 of 60)
            self.supports_score_distributions = False
            self.score_distributions_refusal = (
                "with quantize='int8' its teacher-forced distributions do not match what it "
                "samples from (results/expected_scores); use quantize: none"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.score_prefill = config.score_prefill
        self.constrains_scores = config.score_prefill and config.constrain_scores
        #: where ``config.stream`` writes the judge's text (default: stderr)
        self.stream_to = stream_to
        self._tok_lock = threading.RLock()
        # scoring forwards run beside the generation worker; one at a time keeps memory flat
        self._forward_lock = threading.Lock()
        self.context_window = config.context_window or getattr(
            self.model.config, "max_position_embeddings", None
        )
        self._batcher = MicroBatcher(
            self._generate_batch, max_rows=config.batch_size, max_wait=config.batch_wait
        )

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def health(self) -> EngineHealth:
        return self._batcher.health()

    def _render(self, request: GenerationRequest) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(f"{self.config.model} has no chat template: use an instruct model")
        messages: list[dict[str, str]] = list(request.messages)
        prefix = request.assistant_prefix
        if prefix is not None:
            messages.append({"role": "assistant", "content": prefix})
        opts: dict[str, Any] = (
            {"continue_final_message": True}
            if prefix is not None
            else {"add_generation_prompt": True}
        )
        with self._tok_lock:
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, **opts)
            except Exception:  # noqa: BLE001 - some templates reject a system turn: fold it in
                head = [m for m in messages if m["role"] != "assistant"]
                merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in head)}]
                if prefix is not None:
                    merged.append({"role": "assistant", "content": prefix})
                return self.tokenizer.apply_chat_template(merged, tokenize=False, **opts)

    def _generation_kwargs(self, temperature: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.config.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.config.repetition_penalty
        return kwargs

    def _generate_batch(self, jobs: Sequence[Job]) -> list[list[str]]:
        # a seeded request is generated on its own, from its own seed: what it gets must not
        # depend on which other requests shared its batch (their rows, their padding) nor on
        # what the generator drew before; unseeded requests are batched together
        unseeded = [job for job in jobs if job.request.seed is None]
        texts: dict[int, list[str]] = {}
        if unseeded:
            texts.update(zip(map(id, unseeded), self._generate_rows(unseeded), strict=True))
        for job in jobs:
            if job.request.seed is not None:
                with self._seeded(job.request.seed):
                    texts[id(job)] = self._generate_rows([job])[0]
        return [texts[id(job)] for job in jobs]

    def _seeded(self, seed: int) -> Any:
        """Torch's generator seeded with ``seed`` inside, restored after (the caller's own
        random state is left as it was). Only the worker thread generates, so nothing else
        draws from it meanwhile."""
        import contextlib

        import torch

        stack = contextlib.ExitStack()
        cuda = [torch.device(self.device)] if self.device.startswith("cuda") else []
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(seed)
        return stack

    def _generate_rows(self, jobs: Sequence[Job]) -> list[list[str]]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        rows = [(job, self._render(job.request)) for job in jobs for _ in range(job.request.n)]
        max_new = max(job.request.max_tokens for job in jobs)
        if self.config.max_new_tokens is not None:
            max_new = min(max_new, self.config.max_new_tokens)
        kwargs = self._generation_kwargs(jobs[0].request.temperature)
        out_texts: list[str] = []
        bs = self.config.batch_size
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            chunk_jobs = [job for job, _ in chunk]
            if all(job.cancelled for job in chunk_jobs):
                out_texts += [""] * len(chunk)  # nobody reads these
                continue
            with self._tok_lock:
                enc = self.tokenizer(
                    [text for _, text in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(self.device)
            prompt_len = enc["input_ids"].shape[1]
            stopper = _RowStopper(chunk_jobs, prompt_len, loops=self.config.stop_loops)
            extra: dict[str, Any] = {}
            on = self.constrains_scores
            grammars = [job.request.score_list if on else None for job in chunk_jobs]
            if any(grammars):
                extra["logits_processor"] = LogitsProcessorList(
                    [
                        ScoreListProcessor(
                            grammars, prompt_len, self.tokenizer, self._eos_id(), self._tok_lock
                        )
                    ]
                )
            if self.config.stream and len(chunk) == 1:
                extra["streamer"] = self._streamer(chunk_jobs[0].request)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    **kwargs,
                    **extra,
                )
            new = [out[row, prompt_len:].tolist() for row in range(len(chunk))]
            for row, keep in stopper.cut.items():
                new[row] = new[row][:keep]
            with self._tok_lock:
                out_texts += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        result, i = [], 0
        for job in jobs:
            result.append(out_texts[i : i + job.request.n])
            i += job.request.n
        return result

    def _eos_id(self) -> int:
        """The token that ends the assistant's turn (the generation config's first, as
        ``generate`` stops on it)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return self.tokenizer.eos_token_id if eos is None else eos

    def _streamer(self, request: GenerationRequest) -> Any:
        out = self.stream_to or sys.stderr
        if request.assistant_prefix is not None:
            # the judge's text so far was shown already: show only the line it completes
            out.write("\n--- judge completing: " + request.assistant_prefix.rsplit("\n", 1)[-1])
        else:
            out.write("--- judge writing:\n")
        out.flush()
        return _LockedStreamer(self.tokenizer, self._tok_lock, out).streamer

    async def generate(self, request: GenerationRequest) -> list[str]:
        return await self._batcher.submit(request)

    async def score_distributions(
        self, messages: list[dict[str, str]], text: str, starts: Sequence[int]
    ) -> list[ScoreDistribution | None]:
        import asyncio

        return await asyncio.to_thread(self._score_distributions, messages, text, list(starts))

    def _score_distributions(
        self, messages: list[dict[str, str]], text: str, starts: list[int]
    ) -> list[ScoreDistribution | None]:
        prompt = self._render(GenerationRequest(messages))
        return [self._distribution_at(prompt + text[:start]) for start in starts]

    def _distribution_at(self, prefix: str) -> ScoreDistribution | None:
        """Teacher-forced probabilities of each score value written right after ``prefix``."""
        values = [str(v) for v in SCORE_VALUES]
        with self._tok_lock:
            ids = {
                v: self.tokenizer(prefix + v, add_special_tokens=False)["input_ids"] for v in values
            }
        # the tokens all candidates share are the context; tokenizing each candidate with the
        # prefix (not alone) respects merges across the boundary (" 7" as one token)
        context = os.path.commonprefix(list(ids.values()))  # any sequences, not only paths
        common = len(context)
        if common == 0:
            return None
        conts = {v: tuple(x[common:]) for v, x in ids.items()}
        if any(not c for c in conts.values()):
            return None
        # one forward per maximal continuation covers every shorter one that it extends
        rows = sorted({c[:-1] for c in conts.values()}, key=len, reverse=True)
        maximal: list[tuple[int, ...]] = []
        for r in rows:
            if not any(m[: len(r)] == r for m in maximal):
                maximal.append(r)
        logprobs: dict[str, float] = {}
        for row in maximal:
            table = self._position_logprobs(context + list(row), common - 1)
            for v, c in conts.items():
                if row[: len(c) - 1] == c[:-1] and v not in logprobs:
                    logprobs[v] = float(sum(table[j][c[j]] for j in range(len(c))))
        return ScoreDistribution.from_candidates(logprobs, conts)

    def _position_logprobs(self, ids: list[int], first: int) -> Any:
        """Log-probabilities of the next token at positions ``first`` .. end of ``ids``."""
        import torch

        with self._forward_lock, torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            # the decoder's last hidden state and the head on the few positions needed: the
            # full logits of a 2,000-token judgment would be 2,000 x vocabulary floats
            hidden = self.model.get_decoder()(input_ids=x).last_hidden_state[0, first:]
            logits = self.model.get_output_embeddings()(hidden).float()
            return torch.log_softmax(logits, dim=-1)

    async def aclose(self) -> None:
        self._batcher.close()
