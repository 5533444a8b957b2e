"""Entry point of ``grm-plugin``: each subcommand lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import audit, meta_rm, score, serve, spct
from . import eval as eval_cmd

# each module: register(subparsers) adds its parser and sets ``func(args) -> int``
SUBCOMMANDS = [score, serve, meta_rm, eval_cmd, spct, audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grm-plugin", description="Generative reward models for RL training."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the command line as given: ``serve --workers N`` starts its workers with it
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        print(f"grm-plugin: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
