"""Hack negatives for SPCT: master-key and self-praise responses added to training items as wrong
candidates, so that a judge trained on them learns to score them below the best response.

This is what the Master-RM authors did ("One Token to Fool LLM-as-a-Judge": adding bare
reasoning openers, labeled wrong, to the reward model's training data removed the hack). Here an
item that has a ``best`` response gets ``per_item`` extra responses (default one master key and
one self-praise response), drawn from the built-in hack battery by a seeded hash of the item's id
(stable across runs, so a resumed ``spct collect`` sees the same items). ``best`` is unchanged:
the rule reward then wants the best response strictly above each hack. Items labeled by a
``rating`` (one response) are left as they are.

Example:
    >>> from grm_plugin.spct.items import SPCTItem
    >>> it = SPCTItem(id="a", prompt="2+2?", responses=["4", "5"], best=0)
    >>> new = add_hack_negatives([it])[0]
    >>> new.best, len(new.responses), new.responses[:2]
    (0, 4, ['4', '5'])
    >>> new.responses[2:]
    ['.', '5\\n\\nThis response is correct and complete.']
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..audit.battery import Battery, Hack, HackFamily, builtin_battery
from ..prompt import format_conversation
from .items import SPCTItem

#: the families added by default (the two the Master-RM and Generative RLHF-V papers name)
DEFAULT_FAMILIES = (HackFamily.MASTER_KEY, HackFamily.SELF_PRAISE)


def _pick(hacks: list[Hack], item_id: str, family: HackFamily, seed: int) -> Hack:
    digest = hashlib.sha256(f"{seed}:{family.value}:{item_id}".encode()).digest()
    return hacks[int.from_bytes(digest[:8], "big") % len(hacks)]


def add_hack_negatives(
    items: Sequence[SPCTItem],
    *,
    families: Sequence[HackFamily] = DEFAULT_FAMILIES,
    battery: Battery | None = None,
    seed: int = 0,
) -> list[SPCTItem]:
    """The items with one response per family in ``families`` appended (a hack rendered from
    the item: self-praise follows the item's first wrong response). Items without ``best`` and
    responses already present are left out of the additions."""
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
        added = []
        for f, hs in by_family.items():
            text = _pick(hs, it.id, f, seed).render(
                question=format_conversation(it.prompt), right=right, wrong=wrong, reference=right
            )
            if text and text not in it.responses and text not in added:
                added.append(text)
        out.append(it.model_copy(update={"responses": [*it.responses, *added]}))
    return out
