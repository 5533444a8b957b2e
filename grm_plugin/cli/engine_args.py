"""Engine options shared by the subcommands that run a judge."""

from __future__ import annotations

import argparse

from ..config import JudgeConfig, OpenAIEngineConfig, TransformersEngineConfig


def add_judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="judge model: folder, hub id or .gguf file")
    g.add_argument(
        "--server",
        action="append",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (repeatable)",
    )
    p.add_argument("--server-model", help="model name on the server (default: the first listed)")
    p.add_argument(
        "--adapter", help="LoRA adapter folder applied to the local judge model (needs peft)"
    )
    p.add_argument("--config", help="judge config, YAML or JSON (a JudgeConfig)")
    p.add_argument("--samples", "-k", type=int, help="judgments per item (k)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-shuffle", action="store_true", help="keep the response order")
    p.add_argument("--seed", type=int)


def judge_config_from_args(
    args: argparse.Namespace, base: JudgeConfig | None = None
) -> JudgeConfig:
    """A JudgeConfig from ``base`` or --config, overridden by the flags that were given."""
    # deep: the flags below assign into the copy, never into the caller's config
    cfg = JudgeConfig.coerce(base if base is not None else args.config).model_copy(deep=True)
    if args.model:
        cfg.engine = TransformersEngineConfig(model=args.model)
    elif args.server:
        urls = args.server if len(args.server) > 1 else args.server[0]
        cfg.engine = OpenAIEngineConfig(base_url=urls, model=args.server_model)
    if getattr(args, "adapter", None):
        if cfg.engine.type not in ("transformers", "default"):
            raise SystemExit("--adapter needs a local judge model (--model, or the default one)")
        cfg.engine = cfg.engine.model_copy(update={"adapter": args.adapter})
    sampling = cfg.sampling.model_dump()
    for flag, key in [
        ("samples", "samples"),
        ("temperature", "temperature"),
        ("max_new_tokens", "max_new_tokens"),
        ("seed", "seed"),
    ]:
        value = getattr(args, flag)
        if value is not None:
            sampling[key] = value
    if args.no_shuffle:
        sampling["shuffle"] = False
    cfg.sampling = type(cfg.sampling).model_validate(sampling)
    return cfg
