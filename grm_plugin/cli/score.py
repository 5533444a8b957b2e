"""``grm-plugin score``: judge responses to one prompt and show what the judge thought."""

from __future__ import annotations

import argparse
import sys

from ..config import DefaultEngineConfig, TransformersEngineConfig
from ..engines.transformers_engine import say
from ..results import JudgmentResult
from ..reward import GenerativeRewardFn
from .engine_args import add_judge_args, judge_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="judge one prompt's responses",
        description="Judge responses to a prompt with a generative reward model.",
    )
    p.add_argument("--prompt", required=True, help="the user prompt")
    p.add_argument(
        "--response",
        action="append",
        required=True,
        help="a response to judge (repeat for several)",
    )
    p.add_argument("--reference", help="a reference answer")
    p.add_argument("--principles", help="a rubric added to the prompt")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a local judge's text on stderr as it is written (default: when stderr is "
        "a terminal and --json is not given)",
    )
    add_judge_args(p)
    p.set_defaults(func=run)


def format_result(result: JudgmentResult) -> str:
    """Human-readable summary: each sample's principles and critique, then the final scores."""
    lines = []
    for i, s in enumerate(result.samples, start=1):
        shown = ", ".join(str(o + 1) for o in s.order)
        status = "voted" if s.voted else ("failed: " + s.failure if s.failure else "not voted")
        meta = f", meta {s.meta_score:.3f}" if s.meta_score is not None else ""
        lines.append(f"=== sample {i} (responses shown as {shown}; {status}{meta})")
        if s.principles:
            lines += ["--- principles", s.principles]
        if s.critique:
            lines += ["--- critique", s.critique]
        if not s.principles and not s.critique and s.text:
            lines += ["--- judge output", s.text.strip()]
        if s.scores is not None:
            how = ""
            if s.constrained:
                # say so: these numbers are the judge's pick among valid ones, not its own line
                how = f" (under the score grammar; its own line: {s.dropped_line or 'none'})"
            lines.append("--- scores: " + ", ".join(f"{x:g}" for x in s.scores) + how)
    lines.append("=== final scores (mean over voting samples)")
    for i, (sc, fl) in enumerate(zip(result.scores, result.flags, strict=False), start=1):
        value = "None (no valid judgment)" if sc is None else f"{sc:.2f}"
        lines.append(f"response {i}: {value}" + (f"  [{', '.join(fl)}]" if fl else ""))
    if result.error:
        lines.append(f"error: {result.error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = judge_config_from_args(args)
    if args.principles:
        cfg.principles = args.principles
    stream = args.stream if args.stream is not None else sys.stderr.isatty() and not args.json
    if stream and isinstance(cfg.engine, (DefaultEngineConfig, TransformersEngineConfig)):
        # a local judge on a CPU writes for a while: show it rather than a silent terminal
        cfg.engine = cfg.engine.model_copy(update={"stream": True})
    if isinstance(cfg.engine, (DefaultEngineConfig, TransformersEngineConfig)):
        # loading takes seconds to a minute on a CPU: say so rather than sit silent
        say(
            "loading the judge model (the embedded 0.5B judge: ~10-60 s on a CPU; its first "
            "run also assembles and converts it once, ~1-3 min)"
            if isinstance(cfg.engine, DefaultEngineConfig)
            else f"loading the judge model {cfg.engine.model}"
        )
    rm = GenerativeRewardFn.from_config(cfg)
    result = rm.score(args.prompt, args.response, reference=args.reference)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(format_result(result))
    sys.stdout.flush()
    return 1 if result.failed else 0
