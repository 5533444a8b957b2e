"""Split preference data by a hash of each item's id into train and held-out files.

Only short items are kept (prompt + responses <= --max-chars characters) so that the embedded
0.5B judge can handle them on a CPU in a session. An item's side depends on its id alone, so no
item can be in both files, whatever the order or the subset of the data.

    python results/spct/make_split.py /work/shared/data/preference_dev.jsonl --out-dir DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def side(item_id: str) -> str:
    """'train' or 'heldout' from the first byte of sha256(id)."""
    return "train" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "heldout"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("data")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--max-chars", type=int, default=600)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {s: (out / f"{s}.jsonl").open("w") for s in ("train", "heldout")}
    counts = {"train": 0, "heldout": 0}
    with open(args.data) as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            size = len(item["prompt"]) + sum(len(r) for r in item["responses"])
            if size > args.max_chars:
                continue
            s = side(item["id"])
            files[s].write(json.dumps(item) + "\n")
            counts[s] += 1
    for f in files.values():
        f.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
