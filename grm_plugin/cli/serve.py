"""``grm-plugin serve``: a reward server for RL frameworks (OpenRLHF's ``--reward.remote_url``).

Example:
    grm-plugin serve --server http://127.0.0.1:8000/v1 --port 5000 --group-size 8
    # then: openrlhf.cli.train_ppo_ray ... --reward.remote_url http://127.0.0.1:5000/get_reward

The wire format is a protocol found by name (``--protocol``, default ``openrlhf``); its adapter
is imported when the command runs, never when this module is imported.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from ..config import JudgeConfig, LocalModelOptions
from ..deadline import total_bound
from .engine_args import add_judge_args, judge_config_from_args

if TYPE_CHECKING:  # the server module imports fastapi, an optional dependency
    from ..server import ServerSettings

log = logging.getLogger(__name__)

#: read when --token is not given, so the token need not appear in the process list
TOKEN_ENV = "GRM_PLUGIN_TOKEN"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: the wire formats ``--protocol`` offers (keys of ``grm_plugin.server.PROTOCOLS``, which this
#: module does not import: fastapi is optional)
PROTOCOL_NAMES = ("openrlhf",)


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan``/``inf`` would break every answer later)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the judge as a remote reward model (OpenRLHF)",
        description=(
            "Serve a generative reward model over HTTP in a framework's remote reward protocol "
            "(OpenRLHF: POST /get_reward), GET /health. Concurrent samples of one prompt are "
            "judged together (--group-window, --group-size). --config takes a JudgeConfig or a "
            "plugin config with sections judge/openrlhf/server; flags override it."
        ),
    )
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, help="wire format (default openrlhf)")
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 5000)")
    p.add_argument(
        "--token",
        help=f"require this token (default: ${TOKEN_ENV}); an empty token is refused",
    )
    p.add_argument(
        "--deadline", type=finite_float, help="seconds per request, then the failure answer (150)"
    )
    p.add_argument(
        "--group-window",
        type=finite_float,
        help="seconds a sample waits for others of its prompt, to be judged together (0.5; "
        "0: each alone)",
    )
    p.add_argument("--group-size", type=int, help="at most this many judged together (8)")
    p.add_argument("--max-concurrent", type=int, help="judgments run at once (256; per worker)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="N server processes behind the one port; the samples of a prompt (same prompt "
        "and label) always go to the same one, so they are still judged together (1: this "
        "process serves alone)",
    )
    # set by the --workers front for each worker: its Unix socket instead of host/port
    p.add_argument("--uds", help=argparse.SUPPRESS)
    p.add_argument(
        "--header-timeout",
        type=finite_float,
        help="seconds a connection has to send its request headers (10)",
    )
    p.add_argument(
        "--max-connections", type=int, help="open connections at most (open-file limit - 256)"
    )
    p.add_argument(
        "--reward-scale",
        choices=["unit", "raw", "sum"],
        help="'unit': (score - 1) / 9 in [0, 1] (default); 'raw': the 1-10 score; 'sum': the "
        "sum over the k voting samples",
    )
    p.add_argument(
        "--on-failure",
        choices=["abstain", "fallback"],
        help="a failed judgment gets the mean of its group's other rewards ('abstain', "
        "default; when there are none, --fallback-reward or else the scale's middle) or "
        "always --fallback-reward ('fallback')",
    )
    p.add_argument(
        "--fallback-reward",
        type=finite_float,
        help="reward of a failed judgment (implies --on-failure fallback unless given)",
    )
    p.add_argument("--tokenizer", help="policy tokenizer whose special tokens are stripped")
    p.add_argument("--strip", action="append", help="a string removed from responses (repeatable)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="local model (--model or the demo judge): requests from concurrent clients "
        "generated together (8)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        help="local model (--model or the demo judge): seconds to wait for more requests to "
        "fill a batch (0.01)",
    )
    add_judge_args(p)
    p.set_defaults(func=run)


def _judge_config(args: argparse.Namespace, judge_section: JudgeConfig) -> JudgeConfig:
    """The file's judge section with the judge flags applied on top."""
    return judge_config_from_args(args, base=judge_section)


def apply_batching(args: argparse.Namespace, cfg: JudgeConfig) -> JudgeConfig:
    """``--batch-size``/``--batch-wait`` on a local model (a transformers engine or the demo
    judge); refused elsewhere.

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
    if not isinstance(cfg.engine, LocalModelOptions):
        raise ValueError(
            "--batch-size/--batch-wait apply to a local model (--model, engine type "
            f"'transformers' or the demo judge 'default'), not to engine type '{cfg.engine.type}'"
        )
    engine = type(cfg.engine).model_validate({**cfg.engine.model_dump(), **given})
    return cfg.model_copy(update={"engine": engine})


def protocol_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol/policy flags given, in the shape of the protocol's config section (the
    policy flags nested under ``policy``, as in the file).

    Example:
        >>> from grm_plugin.cli.main import build_parser
        >>> protocol_overrides(build_parser().parse_args(["serve", "--fallback-reward", "0"]))
        {'policy': {'fallback': 0.0, 'on_failure': 'fallback'}}
    """
    policy: dict[str, Any] = {}
    if args.reward_scale is not None:
        policy["scale"] = args.reward_scale
    if args.fallback_reward is not None:
        policy["fallback"] = args.fallback_reward
        policy["on_failure"] = "fallback"
    if args.on_failure is not None:
        policy["on_failure"] = args.on_failure
    out: dict[str, Any] = {"policy": policy} if policy else {}
    if args.tokenizer is not None:
        out["tokenizer"] = args.tokenizer
    if args.strip:
        out["strip_tokens"] = list(args.strip)
    return out


def resolve_token(args: argparse.Namespace) -> str | None:
    """--token, else $GRM_PLUGIN_TOKEN; a given but empty one is an error (it would turn the
    check off, or match every request without a token)."""
    from ..server import normalize_token

    if args.token is not None:
        token, source = args.token, "--token"
    else:
        token, source = os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}"
    if token is not None and not normalize_token(token):
        raise ValueError(
            f"{source} is set but empty: give a real token (e.g. "
            "python -c 'import secrets; print(secrets.token_hex(16))'), or unset it to serve "
            "without one"
        )
    return token


def build_settings(args: argparse.Namespace, server_section: dict) -> ServerSettings:
    """ServerSettings from the config file's server section, overridden by the flags given."""
    from ..server import ServerSettings

    data = dict(server_section)
    for key in (
        "protocol",
        "host",
        "port",
        "deadline",
        "group_window",
        "group_size",
        "max_concurrent",
        "header_timeout",
        "max_connections",
    ):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    token = resolve_token(args)
    if token is not None:
        data["token"] = token
    return ServerSettings.model_validate(data)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - a clear message now, not at the end of the model load

        from .. import http_guard  # noqa: F401 - needs h11: the same early, clear message
        from ..server import create_app, load_protocol, plugin_sections
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{e.name} is missing: pip install 'grm-plugin[server]'", name=e.name
        ) from e
    from ..reward import GenerativeRewardFn

    name = args.protocol or "openrlhf"
    if args.config:
        judge, section, server_section = plugin_sections(args.config, name)
    else:
        judge, section, server_section = JudgeConfig(), {}, {}
    cfg = apply_batching(args, _judge_config(args, judge))
    settings = build_settings(args, {**server_section, "protocol": name})
    # everything is checked before the judge loads: a bad flag costs no model load
    protocol = load_protocol(settings.protocol).from_section(section, protocol_overrides(args))
    # a --workers worker (on its --uds socket) is reached only through its front
    if settings.host not in _LOOPBACK and settings.token is None and not args.uds:
        print(
            f"grm-plugin: warning: serving on {settings.host} without a token: anyone who can "
            f"reach port {settings.port} can use the judge (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    deadline = total_bound(settings.deadline, default=protocol.default_deadline)
    if args.workers > 1:
        if cfg.engine.type != "openai":
            print(
                f"grm-plugin: warning: --workers {args.workers} with a local model: each worker "
                f"loads its own copy ({args.workers} in all); a served judge (--server) is shared",
                file=sys.stderr,
            )
        return run_front(args, settings, protocol, deadline)
    rm = GenerativeRewardFn.from_config(cfg)
    app = create_app(rm, protocol, settings)
    # a --workers front's worker listens on its Unix socket, host and port are the front's
    where = {"uds": args.uds} if args.uds else {"host": settings.host, "port": settings.port}
    # on SIGTERM/SIGINT uvicorn stops accepting and lets in-flight requests finish; each one
    # answers within the deadline (fallback at worst), so waiting a little longer than that
    # loses no reward a rollout worker is waiting for, and a stuck engine cannot hang the exit
    serve_guarded(app, protocol, settings, grace=int(deadline) + 5, **where)
    return 0


def run_front(
    args: argparse.Namespace, settings: ServerSettings, protocol: Any, deadline: float
) -> int:
    """``--workers N``: this process is the front on the port; N workers (this command line
    with ``--workers 1``, each on a Unix socket) judge. See ``grm_plugin.serve_workers``."""
    from ..serve_workers import WorkerPool, create_front_app

    argv = getattr(args, "argv", None)
    if argv is None:
        raise ValueError("--workers needs the command line (run it through grm_plugin.cli.main)")
    command = [sys.executable, "-m", "grm_plugin.cli.main", *argv, "--workers", "1"]
    pool = WorkerPool(command, args.workers, stop_timeout=deadline + 10)
    # the front's in-flight requests finish first (each within the deadline), then the
    # lifespan stops the workers
    serve_guarded(
        create_front_app(pool, protocol, settings),
        protocol,
        settings,
        grace=int(deadline) + 10,
        host=settings.host,
        port=settings.port,
    )
    return 0


def serve_guarded(
    app: Any, protocol: Any, settings: ServerSettings, *, grace: int, **where: Any
) -> None:
    """``app`` on uvicorn as every grm-plugin server runs (one process or a ``--workers``
    front): guarded h11, short keep-alive, ``grace`` seconds to finish in-flight requests."""
    from ..http_guard import default_max_connections, guarded_h11

    level = logging.getLogger().getEffectiveLevel()
    run_uvicorn(
        app,
        protocol.paths[0],
        **where,
        log_level="info" if level <= logging.INFO else "warning",
        # uvicorn's h11 protocol plus a header deadline and a connection cap: slow or idle
        # clients (no token needed to open a socket) cannot use up the file descriptors
        http=guarded_h11(
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections or default_max_connections(),
        ),
        # OpenRLHF opens a new connection per request; a long keep-alive only holds sockets
        timeout_keep_alive=5,
        timeout_graceful_shutdown=grace,
        # one line per rollout sample is noise, and the URL may carry the token
        access_log=False,
    )


def run_uvicorn(app: Any, path: str, **config: Any) -> None:
    """``uvicorn.run(app, **config)`` that also prints ``grm-plugin: listening on <URL>`` (the
    URL of ``path``) once the socket accepts connections: uvicorn says so only at log level info,
    and a user (or a script) waiting for the server should not have to poll it."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.servers and self.servers[0].sockets:
                name = self.servers[0].sockets[0].getsockname()
                if isinstance(name, str):  # a Unix socket (a --workers worker)
                    print(f"grm-plugin: listening on {name}", file=sys.stderr, flush=True)
                    return
                # the bound address: with --port 0 the port the system picked
                host, port = name[:2]
                host = f"[{host}]" if ":" in host else host
                url = f"http://{host}:{port}{path}"
                print(f"grm-plugin: listening on {url}", file=sys.stderr, flush=True)

    server = AnnouncingServer(uvicorn.Config(app, **config))
    server.run()
    if not server.started:  # as uvicorn.run: a server that never started is a failed start
        sys.exit(3)
