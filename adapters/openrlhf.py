"""OpenRLHF adapter: OpenRLHF's remote reward-model protocol, answered by a GenerativeRewardFn.

OpenRLHF 0.11.2 asks for a reward right after each rollout, one sample at a time, either over HTTP
(``--reward.remote_url http://127.0.0.1:5000/get_reward``, served by ``grm-plugin serve``) or by
calling ``reward_func(queries, prompts, labels)`` from a ``.py`` file
(``--reward.remote_url examples/openrlhf_reward_func.py``). Both carry:

- ``query``: prompt + response, decoded from token ids WITH special tokens (chat template, EOS);
- ``prompts``: the prompt as OpenRLHF rendered it (chat template applied);
- ``labels``: the dataset's label, "" when there is none; a non-empty label becomes the reference.

and want ``{"rewards": [...], "scores": [...], "extra_logs": {...}}`` back, one entry per query.
A judge failure never raises: the item gets ``fallback_reward`` and ``grm_failed = 1.0``.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import RuleJudgeEngine
    >>> adapter = OpenRLHFReward(GenerativeRewardFn(RuleJudgeEngine()))
    >>> prompt = "<|im_start|>user\\nSay hi<|im_end|>\\n<|im_start|>assistant\\n"
    >>> out = adapter.reward([prompt + "hey<|im_end|>"], [prompt], [""])
    >>> out["rewards"], out["extra_logs"]["grm_failed"]  # judge gave 1 + len("hey") = 4 -> 3/9
    ([0.3333333333333333], [0.0])
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from grm_plugin.config import JudgeConfig
from grm_plugin.engines import JudgeEngine
from grm_plugin.parsing import to_unit
from grm_plugin.prompt import Conversation
from grm_plugin.results import JudgmentResult
from grm_plugin.reward import GenerativeRewardFn, run_sync

log = logging.getLogger(__name__)
T = TypeVar("T")

#: environment variable naming the config file of the ``.py`` target
CONFIG_ENV = "GRM_PLUGIN_CONFIG"

#: OpenRLHF's HTTP client gives up after 180 s; answering within 150 s leaves room for transfer
DEFAULT_DEADLINE_S = 150.0

#: end-of-text / padding / turn markers of common chat models; they never belong to an answer
COMMON_SPECIAL_TOKENS = [
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "<eos>",
    "<pad>",
    "<bos>",
    "</s>",
    "<s>",
    "<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>",
]

#: the extra_logs keys; every answer carries all of them, because OpenRLHF merges the extra_logs
#: of a batch key by key and a key missing from one sample breaks its batch split
LOG_KEYS = ("grm_failed", "grm_timeout", "grm_empty_response", "grm_prompt_mismatch")

# chat templates whose turns can be read back into messages for the judge
_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)
_LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S
)


class OpenRLHFSettings(BaseModel):
    """How OpenRLHF's requests become judge calls, and judgments become rewards."""

    model_config = ConfigDict(extra="forbid")

    reward_scale: Literal["unit", "raw"] = Field(
        "unit", description="'unit': (score - 1) / 9 in [0, 1]; 'raw': the judge's 1-10 score"
    )
    fallback_reward: float = Field(0.0, description="reward (and score) when the judge fails")
    tokenizer: str | None = Field(
        None, description="policy tokenizer folder/hub id: its special tokens are stripped"
    )
    strip_tokens: list[str] = Field(
        default_factory=list, description="more strings removed from the response"
    )
    strip_common_tokens: bool = Field(
        True, description="also strip COMMON_SPECIAL_TOKENS (EOS/pad of common chat models)"
    )
    deadline: float = Field(
        DEFAULT_DEADLINE_S, gt=0, description="seconds per request; then the fallback is returned"
    )


class OpenRLHFRequest(BaseModel):
    """The body OpenRLHF posts: parallel lists, one entry per sample (it sends one)."""

    model_config = ConfigDict(extra="ignore")

    query: list[StrictStr] = Field(..., min_length=1)
    prompts: list[StrictStr] | None = None
    # labels are the dataset's label column as-is: a number or a dict is possible, so any JSON
    # value is taken (and turned into text) rather than refused, which would stop the training
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> OpenRLHFRequest:
        n = len(self.query)
        for name in ("prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"'{name}' has {len(value)} items but 'query' has {n}")
        return self


class OpenRLHFResponse(BaseModel):
    """What OpenRLHF reads back: ``rewards`` train, ``scores`` drive dynamic filtering."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


def label_to_reference(label: Any) -> str | None:
    """A non-empty label as reference text; None, "" and whitespace give no reference."""
    if label is None:
        return None
    text = label if isinstance(label, str) else json.dumps(label, ensure_ascii=False)
    return text if text.strip() else None


class ResponseExtractor:
    """Recovers the response (and a clean conversation) from OpenRLHF's ``query``.

    ``query`` = decode(prompt ids + response ids) with special tokens, so it starts with the
    prompt (unless OpenRLHF cut a too-long prompt from the left, or decoding changed it) and ends
    with EOS and maybe padding.

    Example:
        >>> ex = ResponseExtractor(["<|im_end|>", "<|endoftext|>"])
        >>> ex.response("<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nhello"
        ...             "<|im_end|><|endoftext|>", "<|im_start|>user\\nhi<|im_end|>\\n"
        ...             "<|im_start|>assistant\\n")
        ('hello', True)
    """

    #: prompt tails tried, longest first, to find where the prompt ends when it is no prefix
    ANCHOR_LENGTHS = (256, 64, 16)

    def __init__(self, strip: Sequence[str]) -> None:
        self.strip = sorted({s for s in strip if s}, key=len, reverse=True)
        # longest first, so that a token containing another one is removed whole
        self._strip_re = re.compile("|".join(map(re.escape, self.strip))) if self.strip else None

    @classmethod
    def from_settings(cls, settings: OpenRLHFSettings) -> ResponseExtractor:
        strip = list(settings.strip_tokens)
        if settings.strip_common_tokens:
            strip += COMMON_SPECIAL_TOKENS
        if settings.tokenizer:
            strip += tokenizer_special_tokens(settings.tokenizer)
        return cls(strip)

    def clean(self, text: str) -> str:
        """Remove every strip string."""
        return self._strip_re.sub("", text) if self._strip_re else text

    def response(self, query: str, prompt: str | None) -> tuple[str, bool]:
        """(response, whether the prompt was found in the query)."""
        if not prompt:
            return self.clean(query), prompt is not None
        if query.startswith(prompt):
            return self.clean(query[len(prompt) :]), True
        # left-truncated or re-decoded prompt: its end is still in the query, just before the
        # response; the first occurrence is taken since the prompt comes first
        tail = prompt.rstrip()
        for n in self.ANCHOR_LENGTHS:
            anchor = tail[-n:]
            if len(anchor) < min(n, len(tail)):
                continue
            at = query.find(anchor)
            if at >= 0:
                rest = query[at + len(anchor) :]
                # the whitespace that rstrip() took off the prompt is not part of the response
                return self.clean(rest[len(rest) - len(rest.lstrip()) :]), True
        return self.clean(query), False

    def conversation(self, prompt: str) -> Conversation:
        """The prompt for the judge: chat turns when the template is known, else clean text."""
        for pattern in (_CHATML_TURN, _LLAMA3_TURN):
            turns = [
                {"role": role, "content": self.clean(content).strip()}
                for role, content in pattern.findall(prompt)
            ]
            # the generation prompt ends with an empty assistant turn: not part of the context
            while turns and not turns[-1]["content"]:
                turns.pop()
            if turns:
                return turns
        return self.clean(prompt).strip()


def tokenizer_special_tokens(path: str) -> list[str]:
    """Special tokens (EOS, pad, chat-template markers) of a Hugging Face tokenizer."""
    from transformers import AutoTokenizer  # only needed when a tokenizer is configured

    tok = AutoTokenizer.from_pretrained(path)
    tokens = set(tok.all_special_tokens)
    tokens |= {t.content for t in tok.added_tokens_decoder.values() if t.special}
    return sorted(tokens)


class OpenRLHFReward:
    """Answers OpenRLHF reward requests with a GenerativeRewardFn.

    Each query is judged on its own (OpenRLHF sends the samples of a prompt separately), with the
    label as reference. Judge failures, empty responses and the deadline give the fallback reward
    and a flag in ``extra_logs``; nothing the judge does raises.

    Example:
        >>> from grm_plugin.testing import FailingEngine
        >>> adapter = OpenRLHFReward(GenerativeRewardFn(FailingEngine()))
        >>> out = adapter.reward(["Q: 2+2? A: 4"], ["Q: 2+2? A: "], ["4"])
        >>> out["rewards"], out["extra_logs"]["grm_failed"]
        ([0.0], [1.0])
    """

    def __init__(self, rm: GenerativeRewardFn, settings: OpenRLHFSettings | None = None) -> None:
        self.rm = rm
        self.settings = settings or OpenRLHFSettings()

    @classmethod
    def from_config(
        cls, config: str | Path | dict | None = None, *, engine: JudgeEngine | None = None
    ) -> OpenRLHFReward:
        """From a plugin config file or dict (see ``load_plugin_config``)."""
        judge, adapter, _ = load_plugin_config(config if config is not None else {})
        return cls(GenerativeRewardFn.from_config(judge, engine=engine), adapter)

    @cached_property
    def extractor(self) -> ResponseExtractor:
        # cached: reading a tokenizer's special tokens loads the tokenizer
        return ResponseExtractor.from_settings(self.settings)

    def scale(self, score: float) -> float:
        """A 1-10 judge score as reward."""
        if self.settings.reward_scale == "raw":
            return float(score)
        return min(1.0, max(0.0, to_unit(score)))

    # ------------------------------------------------------------------------------ the protocol

    def reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Sync twin of ``areward``, callable from any thread (OpenRLHF's ``.py`` target); runs on
        grm-plugin's one shared loop, so concurrency limits hold across OpenRLHF's threads."""
        return run_sync(self.areward(queries, prompts, labels))

    async def areward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Rewards for OpenRLHF's parallel lists; raises ValueError only on malformed lists.

        ``deadline`` (seconds, default ``settings.deadline``): items not judged by then get the
        fallback and ``grm_timeout``.
        """
        request = OpenRLHFRequest(query=list(queries), prompts=prompts, labels=labels)
        n = len(request.query)
        prompts_ = request.prompts or [None] * n
        labels_ = request.labels or [None] * n
        timeout = self.settings.deadline if deadline is None else deadline

        mismatch = [0.0] * n
        tasks = []
        for i, (query, prompt, label) in enumerate(
            zip(request.query, prompts_, labels_, strict=True)
        ):
            response, found = self.extractor.response(query, prompt)
            mismatch[i] = 0.0 if found else 1.0
            if not found:
                log.warning("prompt not found in query %d: judging the whole query", i)
            context = self.extractor.conversation(prompt) if prompt else ""
            if not context:
                context = "(no prompt given)"  # the core refuses an empty conversation
            tasks.append(asyncio.ensure_future(self._judge(context, response, label)))

        done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0)) if tasks else ((), ())
        for t in pending:
            t.cancel()
        results = [t.result() if t in done else None for t in tasks]
        return self._answer(results, mismatch).model_dump()

    async def _judge(self, context: Conversation, response: str, label: Any) -> JudgmentResult:
        try:
            return await self.rm.ascore(context, [response], label_to_reference(label))
        except Exception as e:  # noqa: BLE001 - a judge problem must become the fallback reward
            log.warning("judging failed: %s: %s", type(e).__name__, e)
            return JudgmentResult(failed=True, error=f"{type(e).__name__}: {e}")

    def _answer(
        self, results: Sequence[JudgmentResult | None], mismatch: Sequence[float]
    ) -> OpenRLHFResponse:
        rewards: list[float] = []
        logs: dict[str, list[float]] = {k: [] for k in LOG_KEYS}
        for res in results:
            score = res.scores[0] if res is not None and res.scores else None
            empty = res is not None and any("empty_response" in f for f in res.flags)
            if score is None and res is not None:
                log.warning("no reward from the judge: %s", res.error)
            rewards.append(self.settings.fallback_reward if score is None else self.scale(score))
            logs["grm_failed"].append(1.0 if score is None else 0.0)
            logs["grm_timeout"].append(1.0 if res is None else 0.0)
            logs["grm_empty_response"].append(1.0 if empty else 0.0)
        logs["grm_prompt_mismatch"] = [float(m) for m in mismatch]
        return OpenRLHFResponse(rewards=rewards, scores=list(rewards), extra_logs=logs)

    def fallback(self, n: int, *, timeout: bool = False) -> dict[str, Any]:
        """The answer for n queries that were not judged (``timeout``: the deadline passed)."""
        results = [None if timeout else JudgmentResult(failed=True)] * n
        return self._answer(results, [0.0] * n).model_dump()


# ---------------------------------------------------------------------------------- config file


def load_plugin_config(
    config: str | Path | dict,
) -> tuple[JudgeConfig, OpenRLHFSettings, dict[str, Any]]:
    """(judge config, adapter settings, server section) from a YAML/JSON file or a dict.

    The file is either a plain JudgeConfig, or has sections ``judge`` (a JudgeConfig),
    ``openrlhf`` (OpenRLHFSettings) and ``server`` (for ``grm-plugin serve``)::

        judge:
          engine: {type: openai, base_url: http://127.0.0.1:8000/v1}
          sampling: {samples: 4}
        openrlhf: {reward_scale: unit, fallback_reward: 0.0, tokenizer: Qwen/Qwen2.5-7B-Instruct}
        server: {port: 5000}
    """
    if isinstance(config, dict):
        data = config
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    sections = {"judge", "openrlhf", "server"}
    if not sections & data.keys():
        return JudgeConfig.model_validate(data), OpenRLHFSettings(), {}
    unknown = data.keys() - sections
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
    return (
        JudgeConfig.model_validate(data.get("judge") or {}),
        OpenRLHFSettings.model_validate(data.get("openrlhf") or {}),
        dict(data.get("server") or {}),
    )


# ------------------------------------------------------------------------------ the .py target

_default: OpenRLHFReward | None = None
_default_lock = threading.Lock()


def default_adapter() -> OpenRLHFReward:
    """The adapter of ``reward_func``, built once from the file named by $GRM_PLUGIN_CONFIG."""
    global _default
    with _default_lock:  # OpenRLHF calls reward_func from several threads at once
        if _default is None:
            path = os.environ.get(CONFIG_ENV)
            if not path:
                raise RuntimeError(
                    f"set {CONFIG_ENV} to a grm-plugin config file (YAML/JSON) before training"
                )
            started = time.monotonic()
            _default = OpenRLHFReward.from_config(path)
            log.info("grm-plugin reward for OpenRLHF ready in %.1f s", time.monotonic() - started)
        return _default


def reward_func(
    queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any
) -> dict[str, Any]:
    """OpenRLHF's ``.py`` reward target: point ``--reward.remote_url`` at a file re-exporting it.

    Example:
        >>> os.environ["GRM_PLUGIN_CONFIG"] = "judge.yaml"  # doctest: +SKIP
        >>> reward_func(["<prompt>answer</s>"], ["<prompt>"], [""])  # doctest: +SKIP
        {'rewards': [0.78], 'scores': [0.78], 'extra_logs': {'grm_failed': [0.0], ...}}
    """
    return default_adapter().reward(queries, prompts, labels)
