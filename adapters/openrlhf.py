"""OpenRLHF adapter: OpenRLHF's remote reward-model protocol, answered by a GenerativeRewardFn.

OpenRLHF 0.11.2 asks for a reward right after each rollout, one sample at a time, either over HTTP
(``--reward.remote_url http://127.0.0.1:5000/get_reward``, served by ``grm-plugin serve``) or by
calling ``reward_func(queries, prompts, labels)`` from a ``.py`` file
(``--reward.remote_url examples/openrlhf_reward_func.py``). Both carry:

- ``query``: prompt + response, decoded from token ids WITH special tokens (chat template, EOS);
- ``prompts``: the prompt as OpenRLHF rendered it (chat template applied);
- ``labels``: the dataset's label, "" when there is none; a non-empty label becomes the reference.

and want ``{"rewards": [...], "scores": [...], "extra_logs": {...}}`` back, one entry per query.
This module is only that translation (``OpenRLHFProtocol``): what a judged group gives each of
its samples is the core's ``grm_plugin.group_rewards`` (the ``RewardPolicy``, as for trl and
verl), grouping the samples of a prompt is the core's ``GroupBatcher``, HTTP is the core's
server. A judge failure never raises: OpenRLHF needs a number, so a failed sample
gets the policy's ``fill`` (the mean of its group's other rewards, else the fallback), flagged.

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

import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from grm_plugin.config import CONFIG_ENV, JudgeConfig
from grm_plugin.deadline import Expiry, total_bound
from grm_plugin.engines import JudgeEngine
from grm_plugin.group_rewards import group_rewards, judged_reward
from grm_plugin.grouping import GroupBatcher, Judged, RewardItem
from grm_plugin.policy import REWARD_KEYS, RewardPolicy, RewardValue
from grm_plugin.prompt import Conversation
from grm_plugin.results import FailureKind, JudgmentResult
from grm_plugin.reward import GenerativeRewardFn, run_sync
from grm_plugin.server import ProtocolError, RewardProtocol, ServerSettings, plugin_sections

log = logging.getLogger(__name__)

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

#: keys only OpenRLHF's answers carry, next to the policy's ``REWARD_KEYS``
GROUP_SIZE_KEY = "grm_group_size"  # distinct responses the judge saw together with this one
PROMPT_MISMATCH_KEY = "grm_prompt_mismatch"  # the prompt was not found in the query

#: the extra_logs keys; every answer carries all of them, because OpenRLHF merges the extra_logs
#: of a batch key by key and a key missing from one sample breaks its batch split
LOG_KEYS: tuple[str, ...] = (*REWARD_KEYS, GROUP_SIZE_KEY, PROMPT_MISMATCH_KEY)

# chat templates whose turns can be read back into messages for the judge
_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)
_LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S
)


class OpenRLHFSettings(BaseModel):
    """How OpenRLHF's requests become judge calls (the ``openrlhf`` section of a config file).

    ``policy`` decides what a judgment, a failure and an empty response are worth; the rest is
    how the response is cut out of OpenRLHF's decoded ``query``.
    """

    model_config = ConfigDict(extra="forbid")

    policy: RewardPolicy = Field(default_factory=RewardPolicy)
    tokenizer: str | None = Field(
        None, description="policy tokenizer folder/hub id: its special tokens are stripped"
    )
    strip_tokens: list[str] = Field(
        default_factory=list, description="more strings removed from the response"
    )
    strip_common_tokens: bool = Field(
        True, description="also strip COMMON_SPECIAL_TOKENS (EOS/pad of common chat models)"
    )
    max_response_chars: int = Field(
        131072,
        ge=1024,
        description="longer responses are cut (flagged grm_truncated) before anything else "
        "reads them; the judge's context holds less anyway (32k tokens ~ 100k characters)",
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


class ResponseExtractor:
    """Recovers the response (and a clean conversation) from OpenRLHF's ``query``.

    ``query`` = decode(prompt ids + response ids) with special tokens, so it starts with the
    prompt (unless OpenRLHF cut a too-long prompt from the left, or decoding changed it) and ends
    with EOS and maybe padding. Responses longer than ``limit`` characters are cut first, so
    no later step (stripping, the judge's parser) ever works on megabytes.

    Example:
        >>> ex = ResponseExtractor(["<|im_end|>", "<|endoftext|>"])
        >>> ex.response("<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nhello"
        ...             "<|im_end|><|endoftext|>", "<|im_start|>user\\nhi<|im_end|>\\n"
        ...             "<|im_start|>assistant\\n")
        ('hello', True)
    """

    #: prompt tails tried, longest first, to find where the prompt ends when it is no prefix
    ANCHOR_LENGTHS = (256, 64, 16)

    def __init__(self, strip: Sequence[str], limit: int | None = None) -> None:
        self.strip = sorted({s for s in strip if s}, key=len, reverse=True)
        self.limit = limit
        # longest first, so that a token containing another one is removed whole
        self._strip_re = re.compile("|".join(map(re.escape, self.strip))) if self.strip else None

    @classmethod
    def from_settings(cls, settings: OpenRLHFSettings) -> ResponseExtractor:
        strip = list(settings.strip_tokens)
        if settings.strip_common_tokens:
            strip += COMMON_SPECIAL_TOKENS
        if settings.tokenizer:
            strip += tokenizer_special_tokens(settings.tokenizer)
        return cls(strip, settings.max_response_chars)

    def clean(self, text: str) -> str:
        """Remove every strip string."""
        return self._strip_re.sub("", text) if self._strip_re else text

    def response(self, query: str, prompt: str | None) -> tuple[str, bool]:
        """(response, whether the prompt was found in the query)."""
        text, found, _ = self.cut(query, prompt)
        return text, found

    def cut(self, query: str, prompt: str | None) -> tuple[str, bool, bool]:
        """(response, whether the prompt was found, whether the response was cut at ``limit``)."""
        start, found = self._response_start(query, prompt)
        end = len(query)
        truncated = False
        if self.limit is not None and end - start > self.limit:
            end, truncated = start + self.limit, True
        return self.clean(query[start:end]), found, truncated

    def _response_start(self, query: str, prompt: str | None) -> tuple[int, bool]:
        if not prompt:
            return 0, prompt is not None
        if query.startswith(prompt):
            return len(prompt), True
        # left-truncated or re-decoded prompt: its end is still in the query, just before the
        # response; the first occurrence is taken since the prompt comes first
        tail = prompt.rstrip()
        for n in self.ANCHOR_LENGTHS:
            anchor = tail[-n:]
            if len(anchor) < min(n, len(tail)):
                continue
            at = query.find(anchor)
            if at >= 0:
                at += len(anchor)
                # the whitespace that rstrip() took off the prompt is not part of the response
                while at < len(query) and query[at].isspace():
                    at += 1
                return at, True
        return 0, False

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


# ------------------------------------------------------------------------------ the protocol


@dataclass(frozen=True)
class _Decoded:
    """What ``encode`` needs of a request besides the judgments."""

    n: int
    mismatch: tuple[bool, ...]
    truncated: tuple[bool, ...]
    no_prompt: tuple[bool, ...]
    empty: tuple[bool, ...]


class OpenRLHFProtocol(RewardProtocol):
    """OpenRLHF's wire format for the core server (``grm-plugin serve --protocol openrlhf``).

    Items of one request share a group key when they share the prompt and the label, so the
    core's ``GroupBatcher`` judges the samples of a prompt together, from one request or many.

    Example:
        >>> p = OpenRLHFProtocol.from_section({"policy": {"scale": "raw"}})
        >>> items, state = p.decode({"query": ["Q: 1+1? A: 2"], "prompts": ["Q: 1+1? A: "]})
        >>> items[0].response, items[0].prompt
        ('2', 'Q: 1+1? A:')
    """

    name: ClassVar[str] = "openrlhf"
    # OpenRLHF's docs use /get_reward; a bare base URL posts to /
    paths: ClassVar[tuple[str, ...]] = ("/get_reward", "/")
    default_deadline: ClassVar[float] = DEFAULT_DEADLINE_S

    def __init__(self, settings: OpenRLHFSettings | None = None) -> None:
        self.settings = settings or OpenRLHFSettings()

    @classmethod
    def from_section(
        cls, section: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> OpenRLHFProtocol:
        """Settings from the ``openrlhf`` section; ``overrides`` (flags) have the section's
        shape: their ``policy`` fields replace the section's one by one, their
        ``strip_tokens`` are added, any other key replaces the section's."""
        data = {**section}
        for key, value in (overrides or {}).items():
            if key == "policy":
                data[key] = {**dict(data.get(key) or {}), **value}
            elif key == "strip_tokens":
                data[key] = [*data.get(key, []), *value]
            else:
                data[key] = value
        return cls(OpenRLHFSettings.model_validate(data))

    @property
    def policy(self) -> RewardPolicy:
        return self.settings.policy

    @cached_property
    def extractor(self) -> ResponseExtractor:
        # cached: reading a tokenizer's special tokens loads the tokenizer
        return ResponseExtractor.from_settings(self.settings)

    async def startup(self) -> None:
        import asyncio

        # load the tokenizer (if any) now rather than in the first request's deadline
        await asyncio.to_thread(lambda: self.extractor)

    def decode(self, data: Any) -> tuple[list[RewardItem], _Decoded]:
        if not isinstance(data, dict):
            raise ProtocolError(422, "request body must be a JSON object with a 'query' list")
        try:
            request = OpenRLHFRequest.model_validate(data)
        except ValidationError as e:
            # include_input=False: do not echo (possibly huge) queries back
            errors = e.errors(include_url=False, include_input=False, include_context=False)
            raise ProtocolError(422, "malformed reward request", errors) from None
        return self._items(request)

    def _items(self, request: OpenRLHFRequest) -> tuple[list[RewardItem], _Decoded]:
        n = len(request.query)
        prompts = request.prompts or [None] * n
        labels = request.labels or [None] * n
        items, mismatch, truncated, no_prompt, empty = [], [], [], [], []
        for query, prompt, label in zip(request.query, prompts, labels, strict=True):
            response, found, cut = self.extractor.cut(query, prompt)
            context = self.extractor.conversation(prompt) if prompt else ""
            reference = self.policy.reference(label)
            items.append(
                RewardItem(
                    # the core refuses an empty conversation
                    context or "(no prompt given)",
                    response,
                    reference,
                    # the samples of one prompt (same rendered prompt and label) are one group
                    group=(prompt, reference) if prompt else None,
                )
            )
            mismatch.append(bool(prompt) and not found)
            truncated.append(cut)
            no_prompt.append(not context)
            empty.append(not response.strip())
        if any(mismatch):
            # one line per request, not per query: a 1,024-query batch must not flood the log
            first = mismatch.index(True)
            log.warning(
                "prompt not found in %d of %d queries (first: %d): judging the whole query",
                sum(mismatch),
                n,
                first,
            )
        decoded = _Decoded(n, *map(tuple, (mismatch, truncated, no_prompt, empty)))
        return items, decoded

    def encode(self, state: _Decoded, judged: Sequence[Judged]) -> dict[str, Any]:
        rows = []
        failed: list[str] = []
        for i, j in enumerate(judged):
            # OpenRLHF needs a number: a failure gets the policy's fill from its group
            sample = judged_reward(self.policy, j, empty=state.empty[i])
            value = sample.value
            if value.failed:
                failed.append(str(value.error))
            value.truncated = value.truncated or state.truncated[i]
            value.no_prompt = state.no_prompt[i]
            rows.append((value, sample.reward, sample.group_size))
        if failed:
            # one line per request: the per-sample errors are in the response's extra_logs
            log.warning(
                "no reward from the judge for %d of %d queries (first: %s)",
                len(failed),
                len(judged),
                failed[0],
            )
        return self._answer(rows, state)

    def _answer(
        self, rows: Sequence[tuple[RewardValue, float, int]], state: _Decoded
    ) -> dict[str, Any]:
        rewards: list[float] = []
        logs: dict[str, list[float]] = {k: [] for k in LOG_KEYS}
        for i, (value, reward, distinct) in enumerate(rows):
            rewards.append(float(reward))
            for key, flag in value.flags().items():
                logs[key].append(flag)
            logs[GROUP_SIZE_KEY].append(float(distinct))
            logs[PROMPT_MISMATCH_KEY].append(1.0 if state.mismatch[i] else 0.0)
        return OpenRLHFResponse(rewards=rewards, scores=list(rewards), extra_logs=logs).model_dump()

    def failure(self, state: _Decoded, kind: FailureKind, error: str) -> dict[str, Any]:
        rows = []
        for i in range(state.n):
            result = JudgmentResult(failed=True, failure_kind=kind, error=error)
            sample = group_rewards(self.policy, result, [0], [state.empty[i]])[0]
            rows.append((sample.value, sample.reward, 0))
        return self._answer(rows, state)


# ------------------------------------------------------------------------------ in-process use


class OpenRLHFReward:
    """OpenRLHF's protocol answered in-process (the ``.py`` target), grouping included.

    Example:
        >>> from grm_plugin.testing import FailingEngine
        >>> adapter = OpenRLHFReward(GenerativeRewardFn(FailingEngine()))
        >>> out = adapter.reward(["Q: 2+2? A: 4"], ["Q: 2+2? A: "], ["4"])
        >>> out["rewards"], out["extra_logs"]["grm_failed"]  # abstained: the scale's middle
        ([0.5], [1.0])
    """

    def __init__(
        self,
        rm: GenerativeRewardFn,
        settings: OpenRLHFSettings | None = None,
        server: ServerSettings | None = None,
    ) -> None:
        self.rm = rm
        self.protocol = OpenRLHFProtocol(settings)
        # the same defaults as ``grm-plugin serve``: samples of a prompt that arrive within
        # group_window of each other (from OpenRLHF's threads) are judged together
        self.server = server or ServerSettings()
        self.deadline = total_bound(self.server.deadline, default=DEFAULT_DEADLINE_S)
        self.batcher = GroupBatcher(
            rm,
            window=self.server.group_window,
            max_size=self.server.group_size,
            max_concurrent=self.server.max_concurrent,
        )

    @property
    def settings(self) -> OpenRLHFSettings:
        return self.protocol.settings

    @classmethod
    def from_config(
        cls, config: str | Path | dict | None = None, *, engine: JudgeEngine | None = None
    ) -> OpenRLHFReward:
        """From a plugin config file or dict (see ``load_plugin_config``)."""
        judge, adapter, server = load_plugin_config(config if config is not None else {})
        return cls(
            GenerativeRewardFn.from_config(judge, engine=engine),
            adapter,
            ServerSettings.model_validate(server),
        )

    def reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Sync twin of ``areward``, callable from any thread (OpenRLHF's ``.py`` target); runs on
        grm-plugin's one shared loop, so grouping and concurrency limits hold across threads."""
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

        ``deadline`` (seconds, default the server settings' or 150): items not judged by then
        get the failure value and ``grm_failed_timeout``.
        """
        import asyncio

        request = OpenRLHFRequest(query=list(queries), prompts=prompts, labels=labels)
        items, state = self.protocol._items(request)
        # one clock for the call, its group window included (as the server's per request)
        expiry = Expiry.after(self.deadline if deadline is None else deadline)
        judged = await asyncio.gather(*(self.batcher.judge(it, expiry=expiry) for it in items))
        return self.protocol.encode(state, judged)


def load_plugin_config(
    config: str | Path | Mapping[str, Any],
) -> tuple[JudgeConfig, OpenRLHFSettings, dict[str, Any]]:
    """(judge config, adapter settings, server section) from a YAML/JSON file or a dict.

    The file is either a plain JudgeConfig, or has sections ``judge`` (a JudgeConfig),
    ``openrlhf`` (OpenRLHFSettings) and ``server`` (``grm-plugin serve``; its ``group_window``
    and ``group_size`` also apply to the ``.py`` target)::

        judge:
          engine: {type: openai, base_url: http://127.0.0.1:8000/v1}
          sampling: {samples: 4}
        openrlhf: {policy: {scale: unit}, tokenizer: Qwen/Qwen2.5-7B-Instruct}
        server: {port: 5000, group_window: 0.5}
    """
    judge, section, server = plugin_sections(config, OpenRLHFProtocol.name)
    return judge, OpenRLHFSettings.model_validate(section), server


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
