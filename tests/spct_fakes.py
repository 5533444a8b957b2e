"""A scripted judge double for SPCT tests: per item, the outcome of each successive judgment.

It reads the shown responses back out of the real judge prompt (so the real prompt builder,
shuffling and parser run) and writes a judgment that is right, wrong, tied or unparsable as
scripted, or fails like a dead server.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from grm_plugin import GenerativeRewardFn
from grm_plugin.engines.base import EngineError, GenerationRequest, JudgeEngine
from grm_plugin.spct import SPCTItem, collect
from grm_plugin.spct.collect import CollectCounts
from grm_plugin.testing import shown_responses

_CONVERSATION = re.compile(
    r"<<<CONVERSATION BEGIN (\w+)>>>\n(.*?)\n<<<CONVERSATION END \1>>>", re.S
)


def conversation(request: GenerationRequest) -> str:
    return _CONVERSATION.search(request.messages[-1]["content"]).group(2)


class ScriptedJudge(JudgeEngine):
    """``scripts[prompt] = (best_text_or_rating, outcomes, hinted_outcomes)``; outcomes are
    "right", "wrong", "tie", "garbage" or "fail", used in turn."""

    def __init__(self, scripts: dict[str, tuple[str | float, list[str], list[str]]]) -> None:
        self.scripts = scripts
        self.used: dict[tuple[str, bool], int] = defaultdict(int)
        self.requests: list[GenerationRequest] = []
        self.texts: list[tuple[GenerationRequest, str]] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        prompt = conversation(request)
        hinted = "Hint: the best response is" in request.messages[-1]["content"]
        label, plain, hint_script = self.scripts[prompt]
        script = hint_script if hinted else plain
        shown = shown_responses(request)
        out = []
        for _ in range(request.n):
            outcome = script[min(self.used[prompt, hinted], len(script) - 1)]
            self.used[prompt, hinted] += 1
            if outcome == "fail":
                raise EngineError("scripted engine failure")
            if outcome == "garbage":
                text = "Specific Criteria: none\nAnalysis: I cannot decide."
            elif isinstance(label, float):  # one response with a rating
                score = label if outcome == "right" else label - 1
                text = f"Specific Criteria: a\nAnalysis: b\nFinal Scores: [[{score:g}]]"
            else:
                if outcome == "right":
                    scores = [9 if r == label else 3 for r in shown]
                elif outcome == "wrong":
                    scores = [2 if r == label else 8 for r in shown]
                else:  # tie
                    scores = [6 for _ in shown]
                joined = ", ".join(str(s) for s in scores)
                text = f"Specific Criteria: a (100%)\nAnalysis: b\nFinal Scores: [[{joined}]]"
            self.texts.append((request, text))
            out.append(text)
        return out


#: two items whose scripted judgments (``collect_scripted_rft``) keep one plain and two hinted
#: records: the RFT data the SFT/RL tests train on
SCRIPTED_ITEMS = [
    SPCTItem(id="a", prompt="Say hi", responses=["hi", "go away"], best=0),
    SPCTItem(id="b", prompt="Add 2 and 2", responses=["5", "4"], best=1),
]


def collect_scripted_rft(out: Path) -> CollectCounts:
    """Collect ``SCRIPTED_ITEMS`` with a scripted judge into ``out`` (hinted round on)."""
    judge = ScriptedJudge(
        {
            "Say hi": ("hi", ["right", "wrong", "wrong"], []),
            "Add 2 and 2": ("4", ["wrong", "wrong", "wrong"], ["right", "wrong", "right"]),
        }
    )
    rm = GenerativeRewardFn(judge, samples=3, seed=0, parse_retries=0)
    return collect(rm, SCRIPTED_ITEMS, out, hint_retry=True, progress=False)
