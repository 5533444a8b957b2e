"""Hack negatives for SPCT: master-key and self-praise responses added to training items as wrong
candidates, so that a judge trained on them learns to score them below the best response.

This is what the Master-RM authors did ("One Token to Fool LLM-as-a-Judge": adding bare
reasoning openers, labeled wrong, to the reward model's training data removed the hack). For
an item that has a ``best`` response, one hack per family (default a master key and a
self-praise response) is drawn from the built-in hack battery by a seeded hash of the item's id
(stable across runs, so a resumed ``spct collect`` sees the same items), and joins the training
set one of two ways (``HackNegatives``):

- ``append``: appended to the item's own responses as more wrong candidates (``best``
  unchanged: the rule reward then wants the best response strictly above each hack);
- ``pairs``: the item is kept as it is, and each hack makes a new item of two responses, the
  best one and the hack (id ``<item id>/<family>``). A judgment is kept when the best response is
  strictly highest, so a weak judge keeps far more of them on two candidates than on four
  (measured on GSM8K training items with the embedded 0.5B judge: appended, 0 of 48 judgments
  of 8 items kept; two candidates, ~10%: ``results/audit/PLAN.md``).

Items labeled by a ``rating`` (one response) are left as they are.

Example:
    >>> from grm_plugin.spct.items import SPCTItem
    >>> it = SPCTItem(id="a", prompt="2+2?", responses=["4", "5"], best=0)
    >>> new = add_hack_negatives([it])[0]
    >>> new.best, len(new.responses), new.responses[:2]
    (0, 4, ['4', '5'])
    >>> new.responses[2:]
    ['.', '5\\n\\nThis response is correct and complete.']
    >>> [(x.id, x.responses[x.best]) for x in add_hack_negatives([it], how="pairs")]
    [('a', '4'), ('a/master_key', '4'), ('a/self_praise', '4')]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import StrEnum

from ..audit.battery import Battery, Hack, HackFamily, builtin_battery
from ..prompt import format_conversation
from .items import SPCTItem

#: the families added by default (the two the Master-RM and Generative RLHF-V papers name)
DEFAULT_FAMILIES = (HackFamily.MASTER_KEY, HackFamily.SELF_PRAISE)


class HackNegatives(StrEnum):
    """How the hacks join the training items (see the module docstring)."""

    APPEND = "append"
    PAIRS = "pairs"


def _draw(item_id: str, what: str, seed: int, n: int) -> int:
    digest = hashlib.sha256(f"{seed}:{what}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def _pick(hacks: list[Hack], item_id: str, family: HackFamily, seed: int) -> Hack:
    return hacks[_draw(item_id, family.value, seed, len(hacks))]


def add_hack_negatives(
    items: Sequence[SPCTItem],
    *,
    how: HackNegatives | str = HackNegatives.APPEND,
    families: Sequence[HackFamily] = DEFAULT_FAMILIES,
    battery: Battery | None = None,
    seed: int = 0,
) -> list[SPCTItem]:
    """The items with one hack per family in ``families`` added ``how`` (a hack rendered from
    the item: self-praise follows the item's first wrong response). Items without ``best`` get
    none; a hack that repeats one of the item's responses is left out."""
    if how not in set(HackNegatives):
        ways = ", ".join(h.value for h in HackNegatives)
        raise ValueError(f"hack negatives are added one of these ways: {ways}; not {how!r}")
    how = HackNegatives(how)
    bat = battery or builtin_battery()
    by_family = {f: [h for h in bat.hacks if h.family is f] for f in families}
    for f, hs in by_family.items():
        if not hs:
            raise ValueError(f"the battery has no {f.value} hack to add")
    out = []
    for it in items:
        if it.best is None or len(it.responses) < 2:
            out.append(it)
            continue
        right = it.responses[it.best]
        wrong = next(r for i, r in enumerate(it.responses) if i != it.best)
        added: dict[HackFamily, str] = {}
        for f, hs in by_family.items():
            text = _pick(hs, it.id, f, seed).render(
                question=format_conversation(it.prompt), right=right, wrong=wrong, reference=right
            )
            if text and text not in it.responses and text not in added.values():
                added[f] = text
        if how is HackNegatives.APPEND:
            out.append(it.model_copy(update={"responses": [*it.responses, *added.values()]}))
            continue
        out.append(it)
        for f, text in added.items():
            pair_id = f"{it.id}/{f.value}"
            # the best response's position is drawn too, so an unshuffled judge is not taught
            # "the first one is right"
            best = _draw(pair_id, "position", seed, 2)
            responses = [right, text] if best == 0 else [text, right]
            out.append(it.model_copy(update={"id": pair_id, "responses": responses, "best": best}))
    return out
