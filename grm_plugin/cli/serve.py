"""``grm-plugin serve``: a reward server for OpenRLHF (``--reward.remote_url``).

Example:
    grm-plugin serve --server http://127.0.0.1:8000/v1 --port 5000 --token "$GRM_TOKEN"
    # then: openrlhf.cli.train_ppo_ray ... --reward.remote_url http://127.0.0.1:5000/get_reward
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.openrlhf import OpenRLHFSettings, load_plugin_config
from ..config import JudgeConfig, TransformersEngineConfig
from .engine_args import add_judge_args, judge_config_from_args

if TYPE_CHECKING:  # the server module imports fastapi, an optional dependency
    from ..server import ServerSettings

log = logging.getLogger(__name__)

#: read when --token is not given, so the token need not appear in the process list
TOKEN_ENV = "GRM_PLUGIN_TOKEN"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the judge as an OpenRLHF remote reward model",
        description=(
            "Serve a generative reward model in OpenRLHF's remote reward protocol: POST "
            "/get_reward, GET /health. --config takes a JudgeConfig or a plugin config with "
            "sections judge/openrlhf/server; flags override it."
        ),
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 5000)")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    p.add_argument("--deadline", type=float, help="seconds per request, then the fallback (150)")
    p.add_argument("--max-concurrent", type=int, help="requests judged at once (256)")
    p.add_argument("--fallback-reward", type=float, help="reward when the judge fails (0.0)")
    p.add_argument(
        "--reward-scale",
        choices=["unit", "raw"],
        help="'unit': (score - 1) / 9 (default); 'raw': the 1-10 score",
    )
    p.add_argument("--tokenizer", help="policy tokenizer whose special tokens are stripped")
    p.add_argument("--strip", action="append", help="a string removed from responses (repeatable)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="local model (--model): requests from concurrent clients generated together (8)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        help="local model (--model): seconds to wait for more requests to fill a batch (0.01)",
    )
    add_judge_args(p)
    p.set_defaults(func=run)


def _judge_config(args: argparse.Namespace, judge_section: JudgeConfig) -> JudgeConfig:
    """The file's judge section with the judge flags applied on top."""
    # judge_config_from_args reads a plain JudgeConfig file, so the section goes through one
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "judge.json"
        path.write_text(judge_section.model_dump_json())
        ns = copy.copy(args)
        ns.config = str(path)
        return judge_config_from_args(ns)


def apply_batching(args: argparse.Namespace, cfg: JudgeConfig) -> JudgeConfig:
    """``--batch-size``/``--batch-wait`` on a local transformers engine; refused elsewhere.

    OpenRLHF sends one sample per request: these decide how many concurrent requests the local
    engine coalesces into one ``generate`` call. A served engine (``--server``) batches on the
    server side, so the flags would silently do nothing there: that is an error instead.
    """
    given = {
        key: value
        for key, value in [("batch_size", args.batch_size), ("batch_wait", args.batch_wait)]
        if value is not None
    }
    if not given:
        return cfg
    if not isinstance(cfg.engine, TransformersEngineConfig):
        raise ValueError(
            "--batch-size/--batch-wait apply to a local model (--model or engine type "
            f"'transformers'), not to engine type '{cfg.engine.type}'"
        )
    engine = TransformersEngineConfig.model_validate({**cfg.engine.model_dump(), **given})
    return cfg.model_copy(update={"engine": engine})


def build_settings(
    args: argparse.Namespace, server_section: dict, adapter: OpenRLHFSettings
) -> ServerSettings:
    """ServerSettings from the config file's sections, overridden by the flags given."""
    from ..server import ServerSettings

    adapter_data = adapter.model_dump()
    for flag, key in [
        ("deadline", "deadline"),
        ("fallback_reward", "fallback_reward"),
        ("reward_scale", "reward_scale"),
        ("tokenizer", "tokenizer"),
    ]:
        if getattr(args, flag) is not None:
            adapter_data[key] = getattr(args, flag)
    if args.strip:
        adapter_data["strip_tokens"] = [*adapter_data["strip_tokens"], *args.strip]
    data = {**server_section, "openrlhf": adapter_data}
    token = args.token or os.environ.get(TOKEN_ENV)
    for key, value in [
        ("host", args.host),
        ("port", args.port),
        ("token", token),
        ("max_concurrent", args.max_concurrent),
    ]:
        if value is not None:
            data[key] = value
    return ServerSettings.model_validate(data)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server import create_app
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{e.name} is missing: pip install 'grm-plugin[server]'", name=e.name
        ) from e
    from ..reward import GenerativeRewardFn

    if args.config:
        judge, adapter, server_section = load_plugin_config(args.config)
    else:
        judge, adapter, server_section = JudgeConfig(), OpenRLHFSettings(), {}
    cfg = apply_batching(args, _judge_config(args, judge))
    settings = build_settings(args, server_section, adapter)
    if settings.host not in _LOOPBACK and settings.token is None:
        print(
            f"grm-plugin: warning: serving on {settings.host} without a token: anyone who can "
            f"reach port {settings.port} can use the judge (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    rm = GenerativeRewardFn.from_config(cfg)
    app = create_app(rm, settings)
    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info" if level <= logging.INFO else "warning",
        # OpenRLHF opens a new connection per request; a long keep-alive only holds sockets
        timeout_keep_alive=5,
        # on SIGTERM/SIGINT uvicorn stops accepting and lets in-flight requests finish; each one
        # answers within the deadline (fallback at worst), so waiting a little longer than that
        # loses no reward a rollout worker is waiting for, and a stuck engine cannot hang the exit
        timeout_graceful_shutdown=int(settings.openrlhf.deadline) + 5,
        # one line per rollout sample is noise, and the URL may carry the token
        access_log=False,
    )
    return 0
