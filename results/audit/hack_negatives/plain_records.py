"""The control arm's SFT records: from the collect run of ``run.sh hack-negatives``
(``--hack-negatives pairs``), the records of the items as they are, without the added
(right answer, hack) items, whose ids are ``<item id>/<family>``.

Exits 1, writing nothing, while that collect has not finished every item, pairs included (its
progress log lists the items it finished, kept or not).

    python results/audit/hack_negatives/plain_records.py --items 32 \\
        --train results/spct_gsm8k/train.jsonl --records results/audit/hack_negatives/rft.jsonl \\
        --out results/audit/hack_negatives/rft_plain.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grm_plugin.spct.collect import ItemOutcome, RFTRecord
from grm_plugin.spct.hack_negatives import add_hack_negatives
from grm_plugin.spct.items import read_items
from grm_plugin.spct.progress import resume


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, required=True, help="the first N valid items")
    ap.add_argument("--train", required=True, help="the items, as spct collect --limit N reads")
    ap.add_argument("--records", required=True, help="the records of the collect with pairs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    items, _ = read_items(args.train, args.items)
    plain = {it.id for it in items}
    judged = {it.id for it in add_hack_negatives(items, how="pairs")}
    # resume reads both files as collect does: a line cut by a kill is dropped, and records of
    # an item the log does not list (stopped between the two writes) are not counted
    finished, records = resume(
        Path(args.records), ItemOutcome.model_validate_json, RFTRecord.model_validate_json
    )
    if missing := judged - finished.keys():
        print(f"{len(missing)} of {len(judged)} items not collected yet in {args.records}")
        return 1
    kept = [r for r in records if r.id in plain]
    Path(args.out).write_text("".join(r.model_dump_json() + "\n" for r in kept))
    print(f"{args.out}: {len(kept)} of {len(records)} records, those of the {len(plain)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
