"""The control arm's SFT records: the SPCT experiment's own collect records (no hack negatives) of
the same first N training items that ``run.sh hack-negatives`` judged with hack negatives.

Exits 1, writing nothing, while that collect has not finished all N items (its progress log
lists the items it finished, kept or not).

    python results/audit/hack_negatives/plain_records.py --items 48 \\
        --train results/spct_gsm8k/train.jsonl --records results/spct_gsm8k/rft.jsonl \\
        --out results/audit/hack_negatives/rft_plain.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grm_plugin.spct.collect import progress_path
from grm_plugin.spct.items import read_items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, required=True, help="the first N valid items")
    ap.add_argument("--train", required=True, help="the items, as spct collect --limit N reads")
    ap.add_argument("--records", required=True, help="the plain collect's records")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    items, _ = read_items(args.train, args.items)
    ids = {it.id for it in items}
    finished = {
        json.loads(ln)["id"]
        for ln in progress_path(args.records).read_text().splitlines()
        if ln.strip()
    }
    if missing := ids - finished:
        print(f"{len(missing)} of {len(ids)} items not collected yet in {args.records}")
        return 1
    kept = [ln for ln in Path(args.records).read_text().splitlines() if ln.strip()]
    kept = [ln for ln in kept if json.loads(ln)["id"] in ids]
    Path(args.out).write_text("".join(ln + "\n" for ln in kept))
    print(f"{args.out}: {len(kept)} records of {len(ids)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
