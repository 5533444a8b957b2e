"""Fill the hack-negatives collect (``--hack-negatives pairs``) with the outcomes of the items as
they are from the GSM8K experiment's own collect, so those items are judged once, not twice.

Both collects run the same judge with the same settings (``results/spct_gsm8k/spct.yaml``) on
the same items; the only difference is which draw of the judge's samples each gets. Taking them
from the experiment's collect saves ~2.4 CPU-min per item (measured there) and gives the two
arms of the audit (hack negatives, and the plain control) the same plain records. Items that the
experiment's collect has not finished are left for the hack-negatives collect to judge, and
items the hack-negatives collect already finished keep their own draw.

Run it while the hack-negatives collect is stopped (``run.sh hack-negatives`` calls it first);
the experiment's collect may be running: its files are only read, up to their last full line.

    python results/audit/hack_negatives/reuse_plain.py --items 32 \\
        --train results/spct_gsm8k/train.jsonl --source results/spct_gsm8k/rft.jsonl \\
        --records results/audit/hack_negatives/rft.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from grm_plugin.spct.collect import ItemOutcome, RFTRecord, progress_path
from grm_plugin.spct.items import read_items
from grm_plugin.spct.progress import ProgressWriter, read_finished_lines, resume


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, required=True, help="the first N valid items")
    ap.add_argument("--train", required=True, help="the items, as spct collect --limit N reads")
    ap.add_argument("--source", required=True, help="the experiment's collect records")
    ap.add_argument("--records", required=True, help="the hack-negatives collect records")
    args = ap.parse_args(argv)
    items, _ = read_items(args.train, args.items)
    plain = [it.id for it in items]
    source = Path(args.source)
    finished = {
        o.id: o for o in read_finished_lines(progress_path(source), ItemOutcome.model_validate_json)
    }
    records: dict[str, list[RFTRecord]] = defaultdict(list)
    for r in read_finished_lines(source, RFTRecord.model_validate_json):
        records[r.id].append(r)
    out = Path(args.records)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, _ = resume(out, ItemOutcome.model_validate_json, RFTRecord.model_validate_json)
    taken = [i for i in plain if i not in done and i in finished]
    for i in taken:  # a logged item's records were on disk before its log line
        if len(records[i]) != finished[i].kept:
            print(f"{source}: {i} logs {finished[i].kept} records, holds {len(records[i])}")
            return 1
    with ProgressWriter(out) as writer:
        for i in taken:
            writer.write(records[i], finished[i])
    print(
        f"{out}: took {len(taken)} of the {len(plain)} items as they are from {source} "
        f"({sum(finished[i].kept for i in taken)} records); {len(plain) - len(taken)} were "
        "already there or are left to judge"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
