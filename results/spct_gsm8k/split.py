"""The split of the GSM8K SPCT experiment, by id, fixed once (see PLAN.md).

- Held-out: the items of ``gsm8k_pairs_dev.jsonl`` (GSM8K *test* questions), in the order of
  sha256(id): the first ``--k8`` are evaluated at k = 1, 2, 4, 8 (in shards of ``--shard``), the
  next ``--k1`` at k = 1 only (shards of ``--shard-k1``), so k = 1 covers ``--k8 + --k1``
  items. Training never reads them.
- Training problems: the first ``--train`` of ``gsm8k_train_problems.jsonl`` (GSM8K *train*
  questions, a disjoint set) in the order of sha256(id); make-pairs turns them into judge items.
- Preference transfer: the first ``--preference`` items of ``preference_dev.jsonl`` by sha256(id).

It refuses to write anything if a training question is also a held-out prompt.

    python results/spct_gsm8k/split.py --data ../shared/data --out-dir results/spct_gsm8k/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _by_hash(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--train", type=int, default=600, help="training problems")
    p.add_argument("--k8", type=int, default=100, help="held-out items evaluated at k=1,2,4,8")
    p.add_argument("--k1", type=int, default=200, help="more held-out items at k=1 only")
    p.add_argument(
        "--shard", type=int, default=25, help="k8 items per evaluation run (resume unit)"
    )
    p.add_argument("--shard-k1", type=int, default=100, help="k1 items per evaluation run")
    p.add_argument("--preference", type=int, default=100, help="preference items (transfer)")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out_dir)
    heldout = _by_hash(_rows(data / "gsm8k_pairs_dev.jsonl"))
    problems = _by_hash(_rows(data / "gsm8k_train_problems.jsonl"))[: args.train]
    preference = _by_hash(_rows(data / "preference_dev.jsonl"))[: args.preference]
    if args.k8 + args.k1 > len(heldout):
        raise SystemExit(f"only {len(heldout)} held-out items")
    overlap = {pr["question"].strip() for pr in problems} & {h["prompt"].strip() for h in heldout}
    if overlap:
        raise SystemExit(f"{len(overlap)} training questions are held-out prompts: refusing")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "problems.jsonl", problems)
    _write(out / "preference.jsonl", preference)
    k8, k1 = heldout[: args.k8], heldout[args.k8 : args.k8 + args.k1]
    shards = {}
    for name, rows, size in (("k8", k8, args.shard), ("k1", k1, args.shard_k1)):
        for i in range(0, len(rows), size):
            shard = f"heldout_{name}_{i // size:02d}"
            _write(out / f"{shard}.jsonl", rows[i : i + size])
            shards[shard] = len(rows[i : i + size])
    (out / "heldout_ids.txt").write_text("".join(h["id"] + "\n" for h in k8 + k1))
    print(json.dumps({"problems": len(problems), "preference": len(preference), **shards}))


if __name__ == "__main__":
    main()
