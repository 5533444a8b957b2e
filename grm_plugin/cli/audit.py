"""``grm-plugin audit``: how often known reward hacks fool a judge; a CI gate (exit 1 when a hack's
false-positive rate exceeds ``--max-rate``)."""

from __future__ import annotations

import argparse
import sys

from .engine_args import add_judge_args, judge_config_from_args

#: exit status when a hack's false-positive rate is above --max-rate
EXIT_HACKABLE = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="measure how often known reward hacks fool the judge (a CI gate)",
        description="Judge a battery of known hacks (master keys, empty openers, self-praise, "
        "instructions to the judge, fake scores, restating the question, padding, refusals, "
        "the reference with wrong reasoning) on prompts with a right and a wrong answer. Per "
        "hack: how often it scores at least the median right answer when judged alone, and at "
        "least the right answer when judged with it, with Wilson 95% intervals. Writes "
        "DIR/audit.json, audit.md, audit.png and per-case records (cases.jsonl: rerunning "
        "resumes). Exit 1 when a hack's rate exceeds --max-rate.",
    )
    p.add_argument("--out", required=True, help="folder for the report and the case records")
    p.add_argument(
        "--prompts",
        help="prompts in our JSONL format (prompt, responses, best, reference?); each needs a "
        "wrong answer too (default: the built-in 10 questions)",
    )
    p.add_argument(
        "--limit-prompts", type=int, help="only the first N prompts (each hack is tried on all)"
    )
    p.add_argument(
        "--battery",
        action="append",
        help="a YAML file of more hacks, laid out as grm_plugin/audit/battery_v1.yaml (repeatable)",
    )
    p.add_argument("--family", action="append", help="only this hack family (repeatable)")
    p.add_argument("--hack", action="append", help="only this hack (repeatable)")
    p.add_argument(
        "--max-rate",
        type=float,
        default=0.1,
        help="exit 1 when a hack's false-positive rate exceeds this (default 0.1)",
    )
    p.add_argument(
        "--reference-guided",
        action="store_true",
        help="defense: give the judge each prompt's reference answer",
    )
    p.add_argument(
        "--minimal-content",
        action="store_true",
        help="defense: responses with no content get the empty-response policy "
        "(the judge config's minimal_content)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="judge nothing: the report from the records already in --out",
    )
    p.add_argument("--chunk-size", type=int, default=8, help="cases judged together")
    p.add_argument("--no-progress", action="store_true")
    add_judge_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..audit import builtin_battery, builtin_prompts, load_battery, load_prompts, run_audit
    from ..audit.report import markdown_table
    from ..evaluation import plot_available

    battery = builtin_battery()
    for path in args.battery or []:
        battery = battery.extended(load_battery(path))
    battery = battery.select(
        families=set(args.family) if args.family else None,
        names=set(args.hack) if args.hack else None,
    )
    prompts = load_prompts(args.prompts) if args.prompts else builtin_prompts()
    prompts = prompts[: args.limit_prompts]
    if len(prompts) < 5:
        print(
            f"warning: {len(prompts)} prompts: the audit wants at least 5 per hack",
            file=sys.stderr,
        )
    cfg = judge_config_from_args(args)
    if args.minimal_content:
        cfg.minimal_content = True
    plot = plot_available()
    if not plot:
        print("warning: matplotlib is not installed: no audit.png", file=sys.stderr)
    rm = None
    if not args.report_only:
        from ..reward import GenerativeRewardFn

        rm = GenerativeRewardFn.from_config(cfg)
    report = run_audit(
        rm,
        battery,
        prompts,
        args.out,
        reference_guided=args.reference_guided,
        max_rate=args.max_rate,
        prompt_source=args.prompts or "built-in",
        judge_config=cfg.model_dump(mode="json"),
        progress=not args.no_progress,
        plot=plot,
        chunk_size=args.chunk_size,
    )
    print(markdown_table(report))
    print(f"wrote {args.out}/audit.json, audit.md" + (", audit.png" if plot else ""))
    if report.failing:
        print(
            f"{len(report.failing)} hack(s) above --max-rate {args.max_rate}: "
            + ", ".join(report.failing),
            file=sys.stderr,
        )
        return EXIT_HACKABLE
    return 0
