"""One reader per benchmark layout, in a registry keyed by ``Format``.

Each reader lists the columns of its layout (a row with any other column is an error, so a
wrong ``--format`` or a changed dataset is caught instead of silently misread) and turns one
raw row into preference items: a prompt, responses and the index of the best one. Pairs and
best-of-n sets come out the same way; an item counts as correct when the best response is
scored strictly above every other one.

The best response is put at a position derived from the item id (a hash), not always first,
so that the data itself does not hand a position-biased judge the answer.

Example:
    >>> from grm_plugin.benchmark_data.rows import Row, Where
    >>> row = Row({"input": "Say hi", "output_1": "hi", "output_2": "bye", "label": 1},
    ...           Where("llmbar.json", line=2))
    >>> item = READERS[Format.LLMBAR].convert(row, ReaderOptions())[0]
    >>> item.responses[item.best]
    'hi'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import ValidationError

from ..items import PreferenceItem
from .rows import Row, Where


class Format(str, Enum):
    """Benchmark layouts ``grm-plugin eval`` reads."""

    GRM_PLUGIN = "grm-plugin"
    REWARDBENCH = "rewardbench"
    REWARDBENCH2 = "rewardbench2"
    JUDGEBENCH = "judgebench"
    PPE_CORRECTNESS = "ppe-correctness"
    RMB = "rmb"
    LLMBAR = "llmbar"


class Overall(str, Enum):
    """How a benchmark's headline number is made from its items."""

    #: accuracy over all items
    MICRO = "micro"
    #: unweighted mean of the subsets' accuracies (RewardBench 2)
    SUBSET_MEAN = "subset_mean"
    #: RewardBench: per section, subsets weighted by example counts; then the sections' mean
    REWARDBENCH_SECTIONS = "rewardbench_sections"


@dataclass(frozen=True)
class ReaderOptions:
    """Options some readers use."""

    #: responses per best-of-K item built from PPE correctness rows (1 correct + K-1 wrong)
    bon_size: int = 4


@dataclass(frozen=True)
class Reader:
    """A benchmark layout: its columns, how a row becomes items, and its headline rule."""

    format: Format
    description: str
    #: alternative sets of required columns (RMB has a pairwise and a best-of-N layout)
    layouts: tuple[frozenset[str], ...]
    optional: frozenset[str]
    convert: Callable[[Row, ReaderOptions], list[PreferenceItem]]
    overall: Overall = Overall.MICRO
    #: columns matching this pattern are allowed too (PPE's response_1 ... response_32)
    column_pattern: re.Pattern[str] | None = None
    hub_id: str | None = None
    hub_split: str | None = None
    notes: str = ""

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset().union(*self.layouts) | self.optional

    def fits(self, columns: set[str]) -> bool:
        """True when ``columns`` are one of this reader's layouts."""
        return any(req <= columns for req in self.layouts) and not self.unknown(columns)

    def unknown(self, columns: set[str]) -> list[str]:
        pattern = self.column_pattern
        return sorted(
            c
            for c in columns
            if c not in self.allowed and not (pattern is not None and pattern.fullmatch(c))
        )

    def check_columns(self, row: Row) -> None:
        """Raise naming the file, line and field when the row's columns are not this layout."""
        columns = set(row.data)
        unknown = self.unknown(columns)
        if unknown:
            raise row.where.error(
                unknown[0],
                f"unknown column for the {self.format.value} format "
                f"(expected {', '.join(sorted(self.allowed))})",
            )
        if not any(req <= columns for req in self.layouts):
            missing = sorted(min(self.layouts, key=lambda r: len(r - columns)) - columns)
            raise row.where.error(missing[0], f"missing column for the {self.format.value} format")


# ------------------------------------------------------------------------------------ helpers


def _text(row: Row, name: str, value: Any = None) -> str:
    value = row.data.get(name) if value is None else value
    if value is None or (isinstance(value, str) and not value.strip()):
        raise row.where.degenerate(name, "empty text")
    if not isinstance(value, str):
        raise row.where.error(name, f"expected a string, got {type(value).__name__}")
    return value


def _subset(row: Row, name: str, value: Any = None) -> str:
    value = row.data.get(name) if value is None else value
    if not isinstance(value, str) or not value.strip():
        raise row.where.error(name, "empty subset")
    return value.strip()


def _item_id(row: Row, name: str | None) -> str:
    if name is not None and row.data.get(name) not in (None, ""):
        return str(row.data[name])
    w = row.where
    stem = w.source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{stem}-{w.line if w.line is not None else w.row}"


def _position(item_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") % n


def _check_unique(where: Where, texts: Sequence[str], field_name: str) -> None:
    """Duplicated texts make a row that cannot be a test: a duplicate of the best response
    could never be beaten strictly, and a duplicate loser is the same comparison twice."""
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        if t in seen:
            raise where.degenerate(
                field_name, f"duplicated response (responses {seen[t] + 1} and {i + 1} are equal)"
            )
        seen[t] = i


def _build(
    where: Where,
    *,
    item_id: str,
    prompt: str | list[dict[str, str]],
    best: str,
    others: Sequence[str],
    subset: str | None,
    field_name: str = "responses",
) -> PreferenceItem:
    """An item with ``best`` put among ``others`` at a position derived from the id."""
    _check_unique(where, [best, *others], field_name)
    pos = _position(item_id, len(others) + 1)
    responses = list(others)
    responses.insert(pos, best)
    return _validated(
        where, id=item_id, prompt=prompt, responses=responses, best=pos, subset=subset
    )


def _validated(where: Where, **fields: Any) -> PreferenceItem:
    try:
        return PreferenceItem(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        raise where.error(loc, err["msg"]) from e


def _messages(row: Row, name: str) -> list[dict[str, str]]:
    value = row.data.get(name)
    if not isinstance(value, list) or not value:
        raise row.where.error(name, "expected a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise row.where.error(f"{name}[{i}]", "expected {'role', 'content'}")
        out.append({"role": str(m.get("role", "user")), "content": m["content"]})
    return out


# ------------------------------------------------------------------------------------ readers


def _ours(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    d, w = row.data, row.where
    responses = d.get("responses")
    if not isinstance(responses, list) or not responses:
        raise w.error("responses", "expected a non-empty list of strings")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise w.error(f"responses[{i}]", f"expected a string, got {type(r).__name__}")
        if not r.strip():
            raise w.degenerate(f"responses[{i}]", "empty text")
    best = d.get("best")
    if isinstance(best, bool) or not isinstance(best, int):
        raise w.error("best", f"expected an integer index, got {best!r}")
    if not 0 <= best < len(responses):
        raise w.error("best", f"index {best} out of range for {len(responses)} responses")
    prompt = d.get("prompt")
    if not isinstance(prompt, (str, list)):
        raise w.error("prompt", "expected a string or a list of chat messages")
    if isinstance(prompt, list):
        prompt = _messages(row, "prompt")
    subset = None
    for name in ("subset", "source"):
        if d.get(name) is not None:
            subset = _subset(row, name)
            break
    _check_unique(w, responses, "responses")
    # our own format keeps the order it was given in (the position is the user's choice)
    return [
        _validated(
            w,
            id=_item_id(row, "id"),
            prompt=prompt,
            responses=responses,
            best=best,
            subset=subset,
            source=d.get("source"),
            reference=d.get("reference"),
        )
    ]


def _rewardbench(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    return [
        _build(
            row.where,
            item_id=_item_id(row, "id"),
            prompt=_text(row, "prompt"),
            best=_text(row, "chosen"),
            others=[_text(row, "rejected")],
            subset=_subset(row, "subset"),
            field_name="rejected",
        )
    ]


def _strings(row: Row, name: str) -> list[str]:
    value = row.data.get(name)
    if not isinstance(value, list) or not value:
        raise row.where.error(name, "expected a non-empty list of responses")
    return [_text(row, f"{name}[{i}]", v) for i, v in enumerate(value)]


def _rewardbench2(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    chosen, rejected = _strings(row, "chosen"), _strings(row, "rejected")
    base = _item_id(row, "id")
    # Ties rows have several correct answers: one best-of-n item per correct answer
    return [
        _build(
            row.where,
            item_id=base if len(chosen) == 1 else f"{base}:{i}",
            prompt=_text(row, "prompt"),
            best=c,
            others=rejected,
            subset=_subset(row, "subset"),
            field_name="rejected",
        )
        for i, c in enumerate(chosen)
    ]


def _judgebench(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    label = row.data.get("label")
    a, b = _text(row, "response_A"), _text(row, "response_B")
    if label == "A>B":
        best, other = a, b
    elif label == "B>A":
        best, other = b, a
    else:
        raise row.where.error("label", f"expected 'A>B' or 'B>A', got {label!r}")
    subset = _subset(row, "source") if "source" in row.data else None
    return [
        _build(
            row.where,
            item_id=_item_id(row, "pair_id"),
            prompt=_text(row, "question"),
            best=best,
            others=[other],
            subset=subset,
            field_name="response_B",
        )
    ]


_PPE_RESPONSE = re.compile(r"response_(\d+)")


def _ppe(row: Row, opts: ReaderOptions) -> list[PreferenceItem]:
    """A best-of-K item: the first correct response and the first K-1 distinct wrong ones.
    Rows where every response is right (or wrong) cannot rank anything and give no item."""
    d = row.data
    keys = sorted((k for k in d if _PPE_RESPONSE.fullmatch(k)), key=lambda k: int(k[9:]))
    scores = d.get("scores")
    if not isinstance(scores, list) or len(scores) != len(keys):
        raise row.where.error(
            "scores", f"expected one correctness label per response ({len(keys)} responses)"
        )
    right: list[str] = []
    wrong: list[str] = []
    for k, s in zip(keys, scores, strict=True):
        if d[k] is None or (isinstance(d[k], str) and not d[k].strip()):
            continue  # PPE has a few empty generations: nothing to judge
        text = _text(row, k)
        if text in right or text in wrong:
            continue  # K samples from one model repeat themselves; a repeat adds no comparison
        (right if bool(s) else wrong).append(text)
    if not right or not wrong:
        return []
    subset = d.get("category") or d.get("subset")
    item_id = _item_id(row, "question_id")
    if d.get("model_name"):
        item_id = f"{item_id}:{d['model_name']}"  # one row per (question, answering model)
    return [
        _build(
            row.where,
            item_id=item_id,
            prompt=_text(row, "prompt"),
            best=right[0],
            others=wrong[: max(1, opts.bon_size - 1)],
            subset=_subset(row, "category" if "category" in d else "subset", subset or "")
            if ("category" in d or "subset" in d)
            else None,
        )
    ]


def _rmb(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    d, w = row.data, row.where

    def answer(name: str, value: Any) -> str:
        if not isinstance(value, dict):
            raise w.error(name, "expected {'llm_name', 'answer'}")
        return _text(row, f"{name}.answer", value.get("answer"))

    if "bon_best" in d:
        losers = d.get("loser_list")
        if not isinstance(losers, list) or not losers:
            raise w.error("loser_list", "expected a non-empty list")
        best = answer("bon_best", d["bon_best"])
        # released BoN files repeat some losers verbatim: the same comparison, kept once
        others = list(dict.fromkeys(answer(f"loser_list[{i}]", x) for i, x in enumerate(losers)))
        item_id, field_name = _item_id(row, "bon_uid"), "loser_list"
    else:
        best, others = answer("chosen", d.get("chosen")), [answer("reject", d.get("reject"))]
        item_id, field_name = _item_id(row, "pair_uid"), "reject"
    path = _subset(row, "category_path")
    # "Pairwise_set/Helpfulness/Code/Documentation" -> "Helpfulness/Code/Documentation"
    subset = path.split("/", 1)[1] if "/" in path else path
    return [
        _build(
            w,
            item_id=item_id,
            prompt=_messages(row, "conversation_input"),
            best=best,
            others=others,
            subset=subset,
            field_name=field_name,
        )
    ]


def _llmbar_subset(source: str) -> str | None:
    """The subset of a released LLMBar file from its path: ``<subset>/dataset.json``, with the
    ``Adversarial/`` group kept (``.../Adversarial/GPTInst/dataset.json`` ->
    ``Adversarial/GPTInst``), whatever the clone's top folders are called.

    >>> _llmbar_subset("llmbar-main/Dataset/LLMBar/Natural/dataset.json")
    'Natural'
    >>> _llmbar_subset("x/Dataset/LLMBar/Adversarial/GPTInst/dataset.json")
    'Adversarial/GPTInst'
    """
    parts = [p for p in source.replace("\\", "/").split("/") if p]
    if len(parts) < 2 or parts[-1].lower() != "dataset.json":
        return None
    if len(parts) >= 3 and parts[-3].lower() == "adversarial":
        return f"{parts[-3]}/{parts[-2]}"
    return parts[-2]


def _llmbar(row: Row, _: ReaderOptions) -> list[PreferenceItem]:
    label = row.data.get("label")
    if label not in (1, 2) or isinstance(label, bool):
        raise row.where.error("label", f"expected 1 or 2, got {label!r}")
    outs = [_text(row, "output_1"), _text(row, "output_2")]
    subset = _subset(row, "subset") if "subset" in row.data else _llmbar_subset(row.where.source)
    item_id = _item_id(row, "id")
    if row.data.get("id") in (None, "") and subset is not None and row.where.line is not None:
        # every released file is <subset>/dataset.json: "dataset-<line>" repeats across them
        item_id = f"{subset}-{row.where.line}"
    return [
        _build(
            row.where,
            item_id=item_id,
            prompt=_text(row, "input"),
            best=outs[label - 1],
            others=[outs[2 - label]],
            subset=subset,
            field_name="output_2",
        )
    ]


@dataclass
class _Registry:
    readers: dict[Format, Reader] = field(default_factory=dict)

    def add(self, reader: Reader) -> None:
        self.readers[reader.format] = reader


_REG = _Registry()
_REG.add(
    Reader(
        Format.GRM_PLUGIN,
        'our JSONL: {"prompt", "responses", "best"} (+ optional "id", "source", "subset", '
        '"reference")',
        (frozenset({"prompt", "responses", "best"}),),
        frozenset({"id", "source", "subset", "reference"}),
        _ours,
    )
)
_REG.add(
    Reader(
        Format.REWARDBENCH,
        "RewardBench (allenai/reward-bench, split filtered): chosen vs rejected pairs",
        (frozenset({"prompt", "chosen", "rejected", "subset"}),),
        frozenset({"id", "chosen_model", "rejected_model"}),
        _rewardbench,
        overall=Overall.REWARDBENCH_SECTIONS,
        hub_id="allenai/reward-bench",
        hub_split="filtered",
    )
)
_REG.add(
    Reader(
        Format.REWARDBENCH2,
        "RewardBench 2 (allenai/reward-bench-2, split test): best of 4",
        (frozenset({"prompt", "chosen", "rejected", "subset", "num_correct"}),),
        frozenset(
            {
                "id",
                "num_incorrect",
                "num_rejected",
                "total_completions",
                "models",
                "additional_metadata",
            }
        ),
        _rewardbench2,
        overall=Overall.SUBSET_MEAN,
        hub_id="allenai/reward-bench-2",
        hub_split="test",
        notes="Ties rows give one item per correct answer; the official Ties score "
        "(which also compares score margins) is not computed.",
    )
)
_REG.add(
    Reader(
        Format.JUDGEBENCH,
        "JudgeBench (ScalerLab/JudgeBench, splits gpt and claude): A>B / B>A pairs",
        (frozenset({"question", "response_A", "response_B", "label"}),),
        frozenset({"pair_id", "original_id", "source", "response_model"}),
        _judgebench,
        hub_id="ScalerLab/JudgeBench",
        hub_split="gpt",
    )
)
_REG.add(
    Reader(
        Format.PPE_CORRECTNESS,
        "PPE correctness (lmarena-ai/PPE-*-Best-of-K): best of K from correctness labels",
        (frozenset({"prompt", "scores", "response_1", "response_2"}),),
        frozenset(
            {
                "question_id",
                "model_name",
                "category",
                "subset",
                "sampled_conflict_pairs",
                "conflict_pairs",
                "parsed_outputs",
                "accuracy",
            }
        ),
        _ppe,
        column_pattern=_PPE_RESPONSE,
        hub_split="train",
        notes="Each row gives one item: its first correct response and its first K-1 distinct "
        "wrong ones (--bon-size, default 4); rows that are all right or all wrong are skipped.",
    )
)
_REG.add(
    Reader(
        Format.RMB,
        "RMB (RMB_dataset/Pairwise_set and BoN_set JSON files): pairs and best of N",
        (
            frozenset({"conversation_input", "chosen", "reject", "category_path"}),
            frozenset({"conversation_input", "bon_best", "loser_list", "category_path"}),
        ),
        frozenset({"pair_uid", "bon_uid"}),
        _rmb,
        notes="Best-of-N rows list some losers more than once: each loser is kept once.",
    )
)
_REG.add(
    Reader(
        Format.LLMBAR,
        "LLMBar (Dataset/LLMBar/*/dataset.json): output_1 vs output_2, label 1 or 2",
        (frozenset({"input", "output_1", "output_2", "label"}),),
        frozenset({"id", "subset"}),
        _llmbar,
    )
)

#: every reader, by format
READERS: dict[Format, Reader] = dict(_REG.readers)


def detect_format(row: Row) -> Format:
    """The format whose columns match this row's, or a clear error."""
    columns = set(row.data)
    matches = [f for f, r in READERS.items() if r.fits(columns)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise row.where.error(
            None,
            f"columns {sorted(columns)} match no known benchmark format "
            f"({', '.join(f.value for f in Format)}); pass --format to see what is wrong",
        )
    raise row.where.error(
        None,
        f"columns match several formats ({', '.join(m.value for m in matches)}): pass --format",
    )
