"""``grm-plugin eval``: accuracy against k for voting and meta-RM voting, with a plot."""

from __future__ import annotations

import argparse
import time

from .engine_args import add_judge_args, judge_config_from_args


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--samples wants integers like 1,2,4,8: {e}") from e
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--samples wants positive integers like 1,2,4,8")
    return ks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure accuracy against k on labeled preference data",
        description="Draw max(k) judgments per item once, then score every k from the first k "
        "samples: plain voting and (with --meta-rm) meta-RM voting; writes JSON, markdown, PNG.",
    )
    p.add_argument("data", help='preference data, JSONL {"id", "prompt", "responses", "best"}')
    p.add_argument("--meta-rm", help="folder of a meta RM saved by `grm-plugin meta-rm train`")
    p.add_argument("--meta-device", default="auto")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--out", default="eval-out", help="folder for report.json/.md and the plot")
    p.add_argument("--records", help="also write meta-RM training records from this draw")
    p.add_argument(
        "--reuse-samples", help="evaluate a saved samples.jsonl instead of running the judge"
    )
    p.add_argument("--parse-retries", type=int, default=0, help="re-sample failed parses")
    p.add_argument("--no-progress", action="store_true")
    add_judge_args(p)
    # here --samples lists the k levels (the judge draws max k once)
    for action in p._actions:
        if "--samples" in action.option_strings:
            action.type = _ks
            action.default = [1, 2, 4, 8]
            action.help = "k levels, e.g. 1,2,4,8 (default); the judge draws max k per item"
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import evaluation as ev
    from ..meta_rm_data import load_preference_items, write_records

    ks: list[int] = args.samples
    args.samples = None  # the judge config gets max k below
    progress = not args.no_progress
    cfg = judge_config_from_args(args)
    # one draw of max k; retries off by default so that level k is exactly the first k samples
    cfg.sampling = cfg.sampling.model_copy(
        update={
            "samples": max(ks),
            "parse_retries": args.parse_retries,
            "seed": cfg.sampling.seed if cfg.sampling.seed is not None else 0,
        }
    )
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.reuse_samples:
        draws = ev.read_draws(args.reuse_samples)[: args.limit]
    else:
        from ..reward import GenerativeRewardFn

        items = load_preference_items(args.data, args.limit)
        rm = GenerativeRewardFn.from_config(cfg)
        draws = ev.draw(rm, items, progress=progress)
        ev.write_draws(draws, f"{args.out}/samples.jsonl")
    timing["judge_seconds"] = time.perf_counter() - t0
    if args.records:
        write_records(ev.records_from_draws(draws), args.records)
    if args.meta_rm:
        from ..meta_rm_model import MetaRM

        t1 = time.perf_counter()
        ev.add_meta_scores(draws, MetaRM(args.meta_rm, device=args.meta_device), progress=progress)
        timing["meta_rm_seconds"] = time.perf_counter() - t1
    report = ev.evaluate(draws, ks, seed=cfg.sampling.seed or 0, parse_retries=args.parse_retries)
    report.config = {
        "data": args.data,
        "judge": cfg.model_dump(mode="json"),
        "meta_rm": args.meta_rm,
        "reused_samples": args.reuse_samples,
    }
    report.timing = timing
    paths = ev.write_report(report, args.out)
    print(ev.markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
