"""Constrained decoding of a score list: the tokens that keep a judge's score line valid.

A small judge often writes its analysis and then a score line that does not parse: scores on
a 100-point scale (``[[80, 90]]``), three scores for two responses, ``9/10`` per response. The
transformers engine, asked for a ``ScoreList`` (the continuation of a prefilled
``Final Scores: [[``), lets the judge pick only tokens that keep the text a prefix of

    NUM (, NUM){n-1} END        NUM: an integer 1-10, END: the template's closing (``]]``, ``}``)

(a single space allowed before each number and before END), and ends the row once the list is
closed. Which score the judge writes is still its own choice, among the valid ones.

The grammar is fixed and tiny, so a prefix check by hand costs a few microseconds per
candidate token; a general grammar library (outlines, xgrammar) would be a heavy dependency of
the CPU demo for one regular language.

Example:
    >>> g = ScoreList(n=2, end="]]")
    >>> [g.state(t) for t in ("", "7", "7, 1", "7, 10", "7, 10]]", "80", "7]]")]
    ['open', 'open', 'open', 'open', 'done', 'dead', 'dead']
"""

from __future__ import annotations

import contextlib
import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["open", "done", "dead"]
#: characters a score-list token may hold; other tokens are never candidates
_LIST_CHARS = frozenset("0123456789, ]}")


@dataclass(frozen=True)
class ScoreList:
    """``n`` integer scores 1-10, comma separated, closed by ``end``."""

    n: int
    end: str

    def state(self, text: str) -> State:
        """``done``: ``text`` is a whole score list; ``open``: a prefix of one; ``dead``: not."""
        i, count, size = 0, 0, len(text)
        while True:
            if i < size and text[i] == " ":
                i += 1
            if i == size:
                return "open"
            if text[i] == "1":
                i += 1
                if i < size and text[i] == "0":
                    i += 1
            elif "2" <= text[i] <= "9":
                i += 1
            else:
                return "dead"
            count += 1
            if i == size:
                return "open"
            if count < self.n:
                if text[i] != ",":
                    return "dead"
                i += 1
                continue
            rest = text[i:].removeprefix(" ")
            if rest == self.end:
                return "done"
            return "open" if self.end.startswith(rest) else "dead"


#: the same characters as vocabulary strings spell them: a space is "Ġ" in byte-level BPE
#: (GPT-2, Qwen, Llama 3) and "▁" in SentencePiece
_VOCAB_CHARS = _LIST_CHARS | {"\u0120", "\u2581"}


@functools.lru_cache(maxsize=8)
def _candidates(tokenizer: Any) -> tuple[tuple[int, str], ...]:
    """Every token whose text is made of score-list characters, with that text. The vocabulary
    strings are screened first and only those decoded: decoding all 152k tokens of the demo
    judge's vocabulary took 2.4 s, the screen 0.46 s (same 124 tokens)."""
    ids = [i for s, i in tokenizer.get_vocab().items() if _VOCAB_CHARS.issuperset(s)]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    return tuple((i, t) for i, t in zip(ids, texts, strict=True) if t and _LIST_CHARS.issuperset(t))


class ScoreListProcessor:
    """A transformers LogitsProcessor (duck-typed): for each row given a ``ScoreList``, only
    tokens that keep its generated text valid; once the list is closed, only end of sequence.
    Rows without one (None) are left alone, as is a row no candidate token can continue (a
    tokenizer without such tokens: the parser then judges the text as usual)."""

    def __init__(
        self,
        grammars: list[ScoreList | None],
        prompt_len: int,
        tokenizer: Any,
        eos: int,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.grammars = grammars
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        self.eos = eos
        # the engine's tokenizer lock: other threads count tokens with the same tokenizer
        self.lock = lock or contextlib.nullcontext()
        with self.lock:
            self.candidates = _candidates(tokenizer)

    def allowed(self, grammar: ScoreList, text: str) -> list[int]:
        """Token ids that may come next after the generated ``text``."""
        if grammar.state(text) == "done":
            return [self.eos]
        return [i for i, t in self.candidates if grammar.state(text + t) != "dead"]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, grammar in enumerate(self.grammars):
            if grammar is None:
                continue
            with self.lock:
                text = self.tokenizer.decode(
                    input_ids[row, self.prompt_len :].tolist(), skip_special_tokens=True
                )
            allowed = self.allowed(grammar, text)
            if not allowed:
                continue
            keep = torch.full_like(scores[row], float("-inf"))
            keep[allowed] = scores[row, allowed]
            scores[row] = keep
        return scores
