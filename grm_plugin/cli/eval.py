"""``grm-plugin eval``: a judge's accuracy on a reward benchmark (RewardBench, RewardBench 2,
JudgeBench, PPE correctness, RMB, LLMBar or our JSONL), per subset and overall, against k, for
greedy, voting and meta-RM voting; writes JSON, markdown and a plot."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .engine_args import add_judge_args, judge_config_from_args


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--samples wants integers like 1,2,4,8: {e}") from e
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--samples wants positive integers like 1,2,4,8")
    return ks


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"wants a whole number: {e}") from e
    if n < 1:
        raise argparse.ArgumentTypeError(f"wants a number >= 1, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    from ..benchmark_data import READERS, Format

    formats = "; ".join(f"{f.value}: {r.description}" for f, r in READERS.items())
    p = sub.add_parser(
        "eval",
        help="measure a judge's accuracy on a reward benchmark, against k",
        description="Draw max(k) judgments per item once, then score every k from the first k "
        "samples: plain voting, (with --meta-rm) meta-RM voting and (with --greedy) one greedy "
        "judgment; per subset and overall; writes JSON, markdown, PNG. Formats: " + formats,
    )
    p.add_argument(
        "data", help="benchmark file (.jsonl, .json, .parquet) or hub dataset id (owner/name)"
    )
    p.add_argument(
        "--format",
        choices=["auto", *(f.value for f in Format)],
        default="auto",
        help="benchmark layout (default: detected from the columns)",
    )
    p.add_argument("--split", help="hub dataset split (default: the benchmark's usual one)")
    p.add_argument("--hub-config", help="hub dataset configuration name")
    p.add_argument("--subset", action="append", help="only this subset (repeatable)")
    p.add_argument("--per-subset", type=int, help="only the first N items of each subset")
    p.add_argument("--bon-size", type=int, default=4, help="PPE correctness: responses per item")
    bad_rows = p.add_mutually_exclusive_group()
    bad_rows.add_argument(
        "--strict",
        action="store_true",
        help="stop at rows with an empty or duplicated response, or repeated (default: skip "
        "them, counted, with a warning)",
    )
    bad_rows.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip every bad row (counted) instead of stopping",
    )
    p.add_argument("--template", help="judge prompt template: a preset name or a .jinja file")
    p.add_argument(
        "--greedy", action="store_true", help="also draw one greedy judgment per item (k=1)"
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="also report adaptive k on the same draw: stop once the leader cannot be overtaken",
    )
    p.add_argument(
        "--agreement", type=int, help="adaptive k: also stop after N agreeing valid samples"
    )
    p.add_argument(
        "--expected-scores",
        action="store_true",
        help="also report voting with expected scores (the judge's distribution over 1..10 at "
        "each score; transformers engines) on the same draw",
    )
    p.add_argument("--meta-rm", help="folder of a meta RM (any sequence classifier)")
    p.add_argument("--meta-device", default="auto")
    p.add_argument(
        "--meta-layout",
        choices=["pair", "chat", "text"],
        help="meta RM input layout (default: the folder's meta_rm_input.json, else pair); "
        "chat: the judge prompt and the judgment as a chat (DeepSeek-GRM-27B-MetaRM)",
    )
    p.add_argument(
        "--meta-judge-template", default="grm-plugin", help="chat layout: the judge template"
    )
    p.add_argument("--meta-text-template", help="text layout: a Jinja2 file")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--out", default="eval-out", help="folder for report.json/.md and the plot")
    p.add_argument("--records", help="also write meta-RM training records from this draw")
    p.add_argument(
        "--reuse-samples", help="evaluate a saved samples.jsonl instead of running the judge"
    )
    p.add_argument("--parse-retries", type=int, default=0, help="re-sample failed parses")
    p.add_argument(
        "--chunk-size",
        type=_positive,
        help="items judged at once, each finished chunk saved in --out so that the same "
        "command run again after a stop judges only the rest (default: 64 judgments' worth)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_judge_args(p)
    # here --samples lists the k levels (the judge draws max k once)
    for action in p._actions:
        if "--samples" in action.option_strings:
            action.type = _ks
            action.default = [1, 2, 4, 8]
            action.help = "k levels, e.g. 1,2,4,8 (default); the judge draws max k per item"
    p.set_defaults(func=run)


def _first_per_subset(items: list, n: int) -> list:
    counts: dict[str | None, int] = {}
    out = []
    for it in items:
        if counts.get(it.subset, 0) < n:
            out.append(it)
            counts[it.subset] = counts.get(it.subset, 0) + 1
    return out


def _expected_scores_refusal(engine: object) -> str | None:
    """Why the configured engine cannot give expected scores, said before any model loads (the
    engine's own check runs once the model is loaded: tens of seconds on a CPU)."""
    from ..config import DefaultEngineConfig, TransformersEngineConfig

    if isinstance(engine, (DefaultEngineConfig, TransformersEngineConfig)):
        if engine.quantize == "int8":
            return (
                "the judge runs with quantize: int8, whose teacher-forced distributions do not "
                "match what it samples from (results/expected_scores): set quantize: none in "
                "the engine section of a --config file"
            )
        return None
    kind = getattr(engine, "type", type(engine).__name__)
    return (
        f"the {kind} engine gives no score distributions (only a local transformers judge "
        "in float32 or bfloat16 does)"
    )


def _count_tokens(rm, draws) -> str:
    from ..engines.base import JudgeEngine

    engine = rm.engine
    for d in draws:
        d.output_tokens = [engine.count_tokens(s.text) if s.text else 0 for s in d.result.samples]
    exact = type(engine).count_tokens is not JudgeEngine.count_tokens
    return "engine tokenizer" if exact else "estimated (characters / 3)"


def _chunk_size(asked: int | None, k: int) -> int:
    """Items judged at once: as asked, else 64 judgments' worth (enough to keep an engine's
    batch full, little to lose to a stop)."""
    return asked or max(1, 64 // k)


#: engine options added after draws were begun, with the value that judges as before they
#: existed: at that value an option is left out of a draw's identity, so that a draw begun by an
#: older version resumes (the identity is a hash of the whole configuration)
_ADDED_ENGINE_OPTIONS = {"constrain_scores": False}


def _identity(cfg) -> str:
    """The judge a resumable draw belongs to: its whole configuration (engine, sampling with
    its seed and k, template, deadlines), hashed."""
    import hashlib

    neutral = {
        name
        for name, value in _ADDED_ENGINE_OPTIONS.items()
        if name in type(cfg.engine).model_fields and getattr(cfg.engine, name) == value
    }
    dump = cfg.model_dump_json(exclude={"engine": neutral} if neutral else None)
    return hashlib.sha256(dump.encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    from .. import evaluation as ev
    from ..adaptive import AdaptiveRule
    from ..benchmark_data import Format, ReaderOptions, load_benchmark
    from ..draw_log import clear as clear_draw
    from ..draw_log import resumable_draw
    from ..meta_rm.data import write_records

    ks: list[int] = args.samples
    args.samples = None  # the judge config gets max k below
    # said before the judging, not after it: the plot is the only part that needs the extra
    plot = ev.plot_available()
    if not plot:
        print(f"warning: {ev.NO_PLOT_WARNING}", file=sys.stderr)
    progress = not args.no_progress
    cfg = judge_config_from_args(args)
    if args.template:
        cfg.template = args.template
    # one draw of max k; retries off by default so that level k is exactly the first k samples
    cfg.sampling = cfg.sampling.model_copy(
        update={
            "samples": max(ks),
            "parse_retries": args.parse_retries,
            "seed": cfg.sampling.seed if cfg.sampling.seed is not None else 0,
            "expected_scores": cfg.sampling.expected_scores or args.expected_scores,
        }
    )
    if cfg.sampling.expected_scores and not args.reuse_samples:
        refusal = _expected_scores_refusal(cfg.engine)
        if refusal is not None:
            print(f"error: --expected-scores: {refusal}", file=sys.stderr)
            return 2
    bench = load_benchmark(
        args.data,
        format=None if args.format == "auto" else Format(args.format),
        split=args.split,
        config=args.hub_config,
        limit=None if args.per_subset else args.limit,
        subsets=set(args.subset) if args.subset else None,
        strict=args.strict,
        skip_invalid=args.skip_invalid,
        options=ReaderOptions(bon_size=args.bon_size),
    )
    items = bench.items
    if args.per_subset:
        items = _first_per_subset(items, args.per_subset)[: args.limit]
    timing: dict[str, float] = {}
    greedy = None
    tokens = "not counted (reused samples)"
    out = Path(args.out)
    if args.reuse_samples:
        wanted = {it.id for it in items}
        draws = [d for d in ev.read_draws(args.reuse_samples) if d.item.id in wanted]
        if args.expected_scores and not any(
            s.expected_scores is not None for d in draws for s in d.result.samples
        ):
            print(
                "error: --expected-scores needs a draw made with it (the reused samples carry "
                "no expected scores: they are measured while judging)",
                file=sys.stderr,
            )
            return 2
        greedy_file = Path(args.reuse_samples).with_name("greedy_samples.jsonl")
        if args.greedy and greedy_file.is_file():
            greedy = ev.read_draws(greedy_file)
    else:
        from ..reward import GenerativeRewardFn

        rm = GenerativeRewardFn.from_config(cfg)
        # judged chunk by chunk into OUT, so that the same command run again after a stop
        # judges only the items left (draw_log: the same draw as an unstopped run)
        t0 = time.perf_counter()
        draws = resumable_draw(
            rm,
            items,
            out,
            judge=_identity(cfg),
            chunk_size=_chunk_size(args.chunk_size, max(ks)),
            progress=progress,
        )
        timing["judge_seconds"] = time.perf_counter() - t0
        timing["judge_seconds_per_item"] = timing["judge_seconds"] / len(items)
        tokens = _count_tokens(rm, draws)
        ev.write_draws(draws, out / "samples.jsonl")
        if args.greedy:
            # samples=1 is the core's greedy judgment (temperature 0)
            g_cfg = cfg.model_copy(
                update={"sampling": cfg.sampling.model_copy(update={"samples": 1})}
            )
            g_rm = GenerativeRewardFn.from_config(g_cfg, engine=rm.engine)
            t0 = time.perf_counter()
            greedy = resumable_draw(
                g_rm,
                items,
                out,
                judge=_identity(g_cfg),
                name="greedy_samples",
                chunk_size=_chunk_size(args.chunk_size, 1),
                progress=progress,
            )
            timing["greedy_seconds"] = time.perf_counter() - t0
            timing["greedy_seconds_per_item"] = timing["greedy_seconds"] / len(items)
            _count_tokens(rm, greedy)
            ev.write_draws(greedy, out / "greedy_samples.jsonl")
    if args.records:
        write_records(ev.records_from_draws(draws), args.records)
    if args.meta_rm:
        from ..meta_rm.model import MetaRM, MetaRMInput

        layout = None
        if args.meta_layout:
            text = Path(args.meta_text_template).read_text() if args.meta_text_template else None
            layout = MetaRMInput(
                layout=args.meta_layout,
                judge_template=args.meta_judge_template,
                text_template=text,
            )
        t1 = time.perf_counter()
        meta = MetaRM(args.meta_rm, device=args.meta_device, input=layout)
        ev.add_meta_scores(draws, meta, progress=progress)
        timing["meta_rm_seconds"] = time.perf_counter() - t1
    report = ev.evaluate(
        draws,
        ks,
        seed=cfg.sampling.seed or 0,
        parse_retries=args.parse_retries,
        greedy=greedy,
        overall=bench.overall,
        adaptive=AdaptiveRule(k_max=max(ks), agreement=args.agreement) if args.adaptive else None,
    )
    report.benchmark = {
        "source": bench.source,
        "format": bench.format.value,
        "overall_rule": bench.overall.value,
        "rows_skipped": bench.skipped,
        "rows_skipped_degenerate": bench.skipped_degenerate,
        "skipped_reasons": bench.skipped_reasons,
        "notes": bench.notes,
        "tokens": tokens,
    }
    report.config = {
        "data": args.data,
        "judge": cfg.model_dump(mode="json"),
        "meta_rm": args.meta_rm,
        "reused_samples": args.reuse_samples,
    }
    report.timing = timing
    paths = ev.write_report(report, out, plot=plot)
    # the report is written: the resumable draws' partial files have served (samples.jsonl
    # keeps every sample); until now a rerun would have reused them instead of judging again
    for name in ("samples", "greedy_samples"):
        clear_draw(out, name)
    print(ev.markdown_table(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
