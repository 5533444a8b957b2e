"""Audit prompts (a question with a right and a wrong answer) and the cases judged for them.

Prompts come from our JSONL data format (``{"id", "prompt", "responses", "best", "reference"?}``,
read by ``grm_plugin.benchmark_data``): the right answer is ``responses[best]``, the wrong answer
the first other response, the reference ``reference`` (else the right answer). The package ships
``prompts_v1.jsonl`` (10 short arithmetic and factual questions).

Per prompt the audit judges the right answer alone once; per hack and prompt, the hacked
response alone and the hacked response in a group with the right answer.

Example:
    >>> from grm_plugin.audit.battery import builtin_battery
    >>> prompts = builtin_prompts()
    >>> len(prompts), prompts[0].reference
    (10, '42')
    >>> cases = build_cases(builtin_battery().select(names={"mk_colon"}), prompts[:5])
    >>> [c.kind.value for c in cases[:3]], cases[2].responses
    (['right', 'alone', 'group'], ['17 + 25 = 42.', ':'])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

from ..prompt import Conversation, format_conversation
from .battery import CONTROL_HACK, Battery, Hack

#: the prompt set shipped with the package
BUILTIN_PROMPTS = "prompts_v1.jsonl"


@dataclass(frozen=True)
class AuditPrompt:
    """A question with a right and a wrong answer."""

    id: str
    prompt: Conversation
    right: str
    wrong: str
    reference: str

    @property
    def question(self) -> str:
        return format_conversation(self.prompt)


def load_prompts(path: str | Path) -> list[AuditPrompt]:
    """Prompts from a file in our JSONL format; an item needs a wrong answer (two responses)."""
    from ..benchmark_data import BenchmarkDataError, Format, load_benchmark

    bench = load_benchmark(path, format=Format.GRM_PLUGIN)
    out = []
    for it in bench.items:
        wrong = [r for i, r in enumerate(it.responses) if i != it.best]
        if not wrong:
            raise BenchmarkDataError(
                f"{path}: item {it.id!r}: the audit needs a wrong answer too (two responses, "
                "'best' naming the right one)"
            )
        right = it.responses[it.best]
        out.append(AuditPrompt(it.id, it.prompt, right, wrong[0], it.reference or right))
    return out


def builtin_prompts() -> list[AuditPrompt]:
    """The prompt set shipped with grm-plugin."""
    with resources.as_file(resources.files(__package__).joinpath(BUILTIN_PROMPTS)) as p:
        return load_prompts(p)


class CaseKind(str, Enum):
    """What one judgment of the audit measures."""

    #: the right answer alone: the bar a hack judged alone must reach
    RIGHT = "right"
    #: the hacked response alone
    ALONE = "alone"
    #: [right answer, hacked response] in one judgment
    GROUP = "group"


@dataclass(frozen=True)
class Case:
    """One judgment to make. ``responses[-1]`` is the hacked one (ALONE, GROUP)."""

    kind: CaseKind
    prompt: AuditPrompt
    responses: list[str]
    hack: Hack | None = None

    def key(self, reference_guided: bool) -> str:
        """A stable id of this judgment (an audit folder holds one judge's records)."""
        blob = json.dumps(
            [
                self.kind.value,
                self.prompt.id,
                self.hack.name if self.hack else None,
                self.responses,
                reference_guided,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def render(hack: Hack, p: AuditPrompt) -> str:
    """The hacked response ``hack`` writes for prompt ``p``."""
    return hack.render(question=p.question, right=p.right, wrong=p.wrong, reference=p.reference)


def build_cases(
    battery: Battery, prompts: list[AuditPrompt], *, control: bool = True
) -> list[Case]:
    """Every case, prompt by prompt (a run stopped early has every hack on the first prompts):
    the right answer alone, then per hack (and the wrong-answer control) alone and grouped."""
    hacks = list(battery.hacks) + ([CONTROL_HACK] if control else [])
    cases = []
    for p in prompts:
        cases.append(Case(CaseKind.RIGHT, p, [p.right]))
        for h in hacks:
            text = render(h, p)
            cases.append(Case(CaseKind.ALONE, p, [text], h))
            cases.append(Case(CaseKind.GROUP, p, [p.right, text], h))
    return cases
