"""``grm-plugin spct collect|sft|rl``: train your own generative reward model (SPCT)."""

from __future__ import annotations

import argparse
import json
import sys

from .engine_args import add_judge_args, judge_config_from_args

_CONFIG_HELP = "SPCT config, YAML or JSON (sections judge, make_pairs, collect, sft, rl)"
_SAVE_MODES = ["adapter", "merged", "both"]
_SAVE_HELP = "adapter (LoRA unmerged, bf16; the default with LoRA), merged, or both"


def _load(args: argparse.Namespace):
    from ..spct.config import SPCTConfig

    return SPCTConfig.load(args.config) if args.config else SPCTConfig()


def _overrides(settings, args: argparse.Namespace, flags: dict[str, str]):
    """``settings`` with the given flags (dest -> field) applied, validated again."""
    data = settings.model_dump()
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            data[key] = value
    if getattr(args, "lora", False) and data.get("lora") is None:
        data["lora"] = {}
    if getattr(args, "full_weights", False):
        data["lora"] = None
    return type(settings).model_validate(data)


def _resumed(report: dict) -> str:
    """Says that the time is this run's alone when training went on from a checkpoint."""
    if not report.get("resumed_from"):
        return ""
    return f" in this run (resumed from {report['resumed_from']})"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "spct",
        help="train a generative reward model: collect RFT data, fine-tune, online RL",
        description="SPCT (DeepSeek-GRM): rejective fine-tuning data, SFT, then GRPO on the judge.",
    )
    steps = p.add_subparsers(dest="spct_command", required=True)

    m = steps.add_parser(
        "make-pairs",
        help="labeled judge items from problems with a reference answer",
        description='Sample N solutions per problem ({"id", "question", "answer"}, JSONL) from '
        "a policy model (--model / --server; default: the embedded judge model), check each "
        "final answer (make_pairs.checker, numeric built in) and pair a right one with a wrong "
        "one (the reference solution when none is right). Writes judge items "
        '({"id", "source", "prompt", "responses", "best", "reference"}) that collect, rl and '
        "eval read. Rerunning with the same --out resumes.",
    )
    m.add_argument("problems", help="problems with reference answers, JSONL")
    m.add_argument("--out", required=True, help="judge items (JSONL); resumed when it exists")
    m.add_argument("--checker", help="answer checker: registered name or module:attribute")
    m.add_argument("--id-field")
    m.add_argument("--question-field")
    m.add_argument("--answer-field")
    m.add_argument("--solution-field", help="reference solution field ('' for none)")
    m.add_argument("--source", help="source label of the items (default make-pairs)")
    m.add_argument("--limit", type=int, help="only the first N valid problems")
    m.add_argument("--no-progress", action="store_true")
    add_judge_args(m)
    _retune(m, samples_help="solutions sampled per problem N (default 4)")
    for action in m._actions:
        if "--no-shuffle" in action.option_strings:
            action.help = argparse.SUPPRESS  # a judge option: solutions have nothing to shuffle
    m.set_defaults(func=run_make_pairs)

    c = steps.add_parser(
        "collect",
        help="sample judgments on labeled data and keep the correct ones",
        description='Judge labeled JSONL ({"id", "prompt", "responses", "best"}, or "rating" '
        "for one response) N times per item and write the correct judgments as chat examples. "
        "Rerunning with the same --out resumes.",
    )
    c.add_argument("data", help="labeled items, JSONL")
    c.add_argument("--out", required=True, help="records file (JSONL); resumed when it exists")
    c.add_argument("--hint-retry", action="store_true", help="hinted round for all-wrong items")
    c.add_argument(
        "--hack-negatives",
        nargs="?",
        const="append",
        choices=["append", "pairs"],
        help="add a master-key and a self-praise response to each item as wrong candidates: "
        "appended to its responses (append, the default) or as new items of two responses, "
        "the best one and a hack (pairs)",
    )
    c.add_argument("--limit", type=int, help="only the first N valid items")
    c.add_argument("--no-progress", action="store_true")
    add_judge_args(c)
    _retune(c, samples_help="judgments per item N (default 3)")
    c.set_defaults(func=run_collect)

    s = steps.add_parser(
        "sft",
        help="fine-tune the judge on collected records (trl SFTTrainer)",
        description="Supervised fine-tuning with the loss on the judgment only; writes a model "
        "folder that --model and GenerativeRewardFn load.",
    )
    s.add_argument("records", help="records from `grm-plugin spct collect`")
    s.add_argument("--out", required=True, help="folder to save the fine-tuned judge into")
    s.add_argument("--base", help="model folder, .gguf or hub id (default: the embedded judge)")
    _add_training_args(s)
    s.add_argument("--drop-hinted", action="store_true", help="leave hinted records out")
    s.add_argument("--epochs", type=float)
    s.add_argument("--max-steps", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--max-length", type=int)
    s.set_defaults(func=run_sft)

    r = steps.add_parser(
        "rl",
        help="GRPO on the judge with the +1/-1 rule reward (trl GRPOTrainer)",
        description="Online RL: judge prompts with fresh response orders, group_size judgments "
        "each, reward +1 when the best response is scored strictly highest, else -1.",
    )
    r.add_argument("data", help="labeled items, JSONL (as for collect)")
    r.add_argument("--out", required=True, help="folder to save the trained judge into")
    r.add_argument("--base", help="model folder, e.g. the sft output (default: embedded judge)")
    _add_training_args(r)
    r.add_argument("--steps", type=int)
    r.add_argument("--group-size", type=int)
    r.add_argument("--beta", type=float, help="KL coefficient (default 0.08)")
    r.add_argument("--temperature", type=float, help="judgment sampling temperature (1.0)")
    r.add_argument(
        "--loss-type",
        choices=["grpo", "dapo", "dr_grpo", "bnpo"],
        help="trl loss (default grpo, the paper's; trl's own default is dapo)",
    )
    r.add_argument("--max-completion-length", type=int)
    r.add_argument("--limit", type=int)
    r.set_defaults(func=run_rl)


# flag -> config key, for --base and the options of _add_training_args
_TRAINING_FLAGS = {
    "base": "base",
    "save": "save",
    "lr": "learning_rate",
    "device": "device",
    "save_steps": "save_steps",
    "gradient_checkpointing": "gradient_checkpointing",
}


def _add_training_args(p: argparse.ArgumentParser) -> None:
    """The options sft and rl share; each maps to the same key of its config section."""
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--lora", action="store_true", help="train a LoRA adapter (the default)")
    kind.add_argument(
        "--full-weights", action="store_true", help="train every weight instead of a LoRA adapter"
    )
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute activations in the backward pass: less memory, slower steps "
        "(default: off for sft, on for rl)",
    )
    p.add_argument("--save", choices=_SAVE_MODES, help=_SAVE_HELP)
    p.add_argument("--lr", type=float)
    p.add_argument("--device")
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps; a rerun resumes")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--no-progress", action="store_true")


def _retune(p: argparse.ArgumentParser, samples_help: str) -> None:
    for action in p._actions:
        if "--config" in action.option_strings:
            action.help = _CONFIG_HELP
        if "--samples" in action.option_strings:
            action.help = samples_help


def run_make_pairs(args: argparse.Namespace) -> int:
    from ..engines import make_engine
    from ..spct.checkers import get_checker
    from ..spct.make_pairs import counts_path, make_pairs, read_problems

    spct = _load(args)
    flags = {
        "samples": "samples",
        "temperature": "temperature",
        "max_new_tokens": "max_new_tokens",
        "seed": "seed",
        "checker": "checker",
        "id_field": "id_field",
        "question_field": "question_field",
        "answer_field": "answer_field",
        "solution_field": "solution_field",
        "source": "source",
    }
    settings = _overrides(spct.make_pairs, args, flags)
    if settings.solution_field == "":
        settings = settings.model_copy(update={"solution_field": None})
    # the policy engine: make_pairs.engine, else the judge's; --model / --server win
    base = spct.judge.model_copy(deep=True)
    if settings.engine is not None:
        base.engine = settings.engine
    for dest in ("samples", "temperature", "max_new_tokens", "seed"):
        setattr(args, dest, None)  # make_pairs settings, applied above
    cfg = judge_config_from_args(args, base=base)
    checker = get_checker(settings.checker)
    problems, report = read_problems(args.problems, settings, checker, args.limit)
    for message in report.messages[:10]:
        print(f"skipped {message}", file=sys.stderr)
    counts = make_pairs(
        problems,
        args.out,
        settings,
        lambda: make_engine(cfg.engine),
        checker=checker,
        read_report=report,
        request_timeout=cfg.deadline.request,
        progress=not args.no_progress,
    )
    print(counts.summary())
    print(f"wrote {args.out} and {counts_path(args.out)}")
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from ..reward import GenerativeRewardFn
    from ..spct.collect import collect, counts_path
    from ..spct.items import read_items

    spct = _load(args)
    samples = args.samples or spct.collect.samples
    args.samples = None  # N is the collect setting, applied below
    cfg = judge_config_from_args(args, base=spct.judge)
    cfg.sampling = cfg.sampling.model_copy(
        update={"samples": samples, "parse_retries": spct.collect.parse_retries}
    )
    items, report = read_items(args.data, args.limit)
    for message in report.messages[:10]:
        print(f"skipped {message}", file=sys.stderr)
    if how := args.hack_negatives or spct.collect.hack_negatives:
        from ..spct.hack_negatives import add_hack_negatives

        items = add_hack_negatives(items, how=how)
    counts = collect(
        # built only when some item is left: a finished run resumed loads no model
        lambda: GenerativeRewardFn.from_config(cfg),
        items,
        args.out,
        hint_retry=args.hint_retry or spct.collect.hint_retry,
        hint_samples=spct.collect.hint_samples,
        chunk_size=spct.collect.chunk_size,
        drop_too_easy=spct.collect.drop_too_easy,
        read_report=report,
        progress=not args.no_progress,
    )
    print(counts.summary())
    print(f"wrote {args.out} and {counts_path(args.out)}")
    return 0


def run_sft(args: argparse.Namespace) -> int:
    from ..spct.collect import read_rft_records
    from ..spct.sft import train_sft

    settings = _overrides(
        _load(args).sft,
        args,
        {
            **_TRAINING_FLAGS,
            "epochs": "epochs",
            "max_steps": "max_steps",
            "batch_size": "batch_size",
            "max_length": "max_length",
        },
    )
    if args.drop_hinted:
        settings = settings.model_copy(update={"hinted": "drop"})
    records = read_rft_records(args.records)
    report = train_sft(records, args.out, settings, progress=not args.no_progress)
    print(
        f"sft: {report['examples']} examples, {report['steps']} steps, "
        f"{report['train_seconds']:.0f}s{_resumed(report)}, mean loss "
        f"{report['train_loss']:.4f} -> {args.out}"
    )
    return 0


def run_rl(args: argparse.Namespace) -> int:
    from ..spct.items import read_items
    from ..spct.rl import train_rl

    spct = _load(args)
    settings = _overrides(
        spct.rl,
        args,
        {
            **_TRAINING_FLAGS,
            "steps": "steps",
            "group_size": "group_size",
            "beta": "beta",
            "temperature": "temperature",
            "loss_type": "loss_type",
            "max_completion_length": "max_completion_length",
        },
    )
    items, report = read_items(args.data, args.limit)
    for message in report.messages[:10]:
        print(f"skipped {message}", file=sys.stderr)
    result = train_rl(
        items,
        args.out,
        settings,
        principles=spct.judge.principles,
        progress=not args.no_progress,
    )
    keys = ("step", "spct/accuracy", "spct/parse_rate", "spct/zero_variance_groups")
    metrics = [
        {k: h[k] for k in keys if k in h} for h in result["log_history"] if "spct/accuracy" in h
    ]
    print("per step: " + json.dumps(metrics))
    print(
        f"{result['steps_without_signal']} of {result['steps']} steps had equal rewards in "
        "every group (zero advantage: they could not learn)"
    )
    print(
        f"rl: {result['steps']} steps, {result['train_seconds']:.0f}s{_resumed(result)} "
        f"-> {args.out}"
    )
    return 0
