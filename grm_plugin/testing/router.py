"""An existing request router (``vllm-router`` or ``sglang-router``) in front of judge replicas,
on 127.0.0.1, for tests and benchmarks of a judge fleet: the documented path past one machine.

The router is the real binary from PyPI (``pip install vllm-router==0.1.17``; optional), started
in a child process with a chosen policy in front of the replicas' URLs (any OpenAI-compatible
servers, e.g. ``SimServer`` replicas). ``Router.url`` is an OpenAI-compatible base URL:
point ``GenerativeRewardFn``, ``grm-plugin serve`` or an adapter's ``engine.base_url`` at it.

Bounded like the testing kit's other child servers: it binds loopback only, dies with its
parent (``PR_SET_PDEATHSIG``, even when the parent is SIGKILLed), and is killed after
``max_lifetime`` seconds whatever the caller does.

Example:
    >>> from grm_plugin import GenerativeRewardFn
    >>> from grm_plugin.testing import SimServer
    >>> with SimServer({"replicas": 2}) as sim, Router(sim.urls) as router:  # doctest: +SKIP
    ...     GenerativeRewardFn(router.url, samples=2).score("Hi", ["hi", "hello there"]).scores
    [3.0, 10.0]
    >>> RouterConfig(policy="cache_aware").command(["http://127.0.0.1:8001/v1"], 9000)[3:]
    ['--host', '127.0.0.1', '--port', '9000', '--worker-urls', 'http://127.0.0.1:8001', \
'--policy', 'cache_aware', '--log-level', 'warning']
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .sim_server import LOOPBACK, SimServer, SimServerConfig, SimStats, die_with_parent


class RouterKind(str, enum.Enum):
    """Which router package; the value is its PyPI name."""

    VLLM = "vllm-router"
    SGLANG = "sglang-router"

    @property
    def module(self) -> str:
        """The package's launcher module (run as ``python -m``, so this interpreter's copy)."""
        return {RouterKind.VLLM: "vllm_router", RouterKind.SGLANG: "sglang_router"}[self]


class RouterPolicy(str, enum.Enum):
    """How the router picks a replica for a request (the routers' own names)."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    CACHE_AWARE = "cache_aware"  # longest prefix match per replica, load-balanced
    CONSISTENT_HASH = "consistent_hash"  # vllm-router only
    POWER_OF_TWO = "power_of_two"


#: policies each router accepts (``--policy``)
SUPPORTED: dict[RouterKind, frozenset[RouterPolicy]] = {
    RouterKind.VLLM: frozenset(RouterPolicy),
    RouterKind.SGLANG: frozenset(RouterPolicy) - {RouterPolicy.CONSISTENT_HASH},
}


class RouterConfig(BaseModel):
    """The router process: which package, which policy, and its bounds."""

    model_config = ConfigDict(extra="forbid")

    kind: RouterKind = RouterKind.VLLM
    policy: RouterPolicy = RouterPolicy.ROUND_ROBIN
    host: str = Field("127.0.0.1", description="loopback only")
    port: int = Field(0, ge=0, le=65535, description="0: a free port")
    start_timeout: float = Field(60.0, gt=0, description="seconds to become ready")
    max_lifetime: float = Field(600.0, gt=0, le=24 * 3600, description="seconds, then killed")
    log_level: str | None = Field(None, description="the router's own level name (default: warn)")
    extra_args: list[str] = Field(default_factory=list, description="passed to the router as is")

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in LOOPBACK:
            raise ValueError(f"the test router binds loopback only ({LOOPBACK}), not {v!r}")
        return v

    @model_validator(mode="after")
    def _policy_supported(self) -> RouterConfig:
        if self.policy not in SUPPORTED[self.kind]:
            raise ValueError(f"{self.kind.value} has no policy {self.policy.value!r}")
        return self

    def command(self, worker_urls: Sequence[str], port: int) -> list[str]:
        """The router's command line for these replicas (base URLs, ``/v1`` or not)."""
        # routers want each worker's root: they add /v1/... themselves
        roots = [u.rstrip("/").removesuffix("/v1") for u in worker_urls]
        cmd = [sys.executable, "-m", f"{self.kind.module}.launch_router"]
        cmd += ["--host", self.host, "--port", str(port), "--worker-urls", *roots]
        level = self.log_level or {RouterKind.VLLM: "warning", RouterKind.SGLANG: "warn"}[self.kind]
        cmd += ["--policy", self.policy.value, "--log-level", level]
        return cmd + list(self.extra_args)


def router_available(kind: RouterKind | str = RouterKind.VLLM) -> bool:
    """Whether this router's package is installed in this interpreter.

    >>> isinstance(router_available("sglang-router"), bool)
    True
    """
    return importlib.util.find_spec(RouterKind(kind).module) is not None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Router:
    """A router in a child process in front of ``worker_urls``; a context manager.

    ``url`` is its OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``) once started.
    Started means ready: its ``/health`` answered 200, which these routers do only once every
    replica answered its own health check.
    """

    def __init__(
        self, worker_urls: Sequence[str], config: RouterConfig | dict | None = None
    ) -> None:
        if not isinstance(config, RouterConfig):
            config = RouterConfig.model_validate(config or {})
        if not worker_urls:
            raise ValueError("a router needs at least one replica")
        self.config = config
        self.worker_urls = list(worker_urls)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self._watchdog: threading.Timer | None = None
        self._log_text = ""

    @property
    def root(self) -> str:
        """``http://HOST:PORT`` of the running router."""
        if self.port is None:
            raise RuntimeError("the router is not started")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI-compatible base URL (``.../v1``)."""
        return self.root + "/v1"

    def log(self) -> str:
        """What the router wrote so far (its stdout and stderr)."""
        if self.log_path is None:
            return self._log_text
        return self.log_path.read_text(errors="replace")

    def start(self) -> Router:
        """Start the router; returns once it is ready, raises (with its log) otherwise."""
        import httpx

        if not router_available(self.config.kind):
            raise RuntimeError(
                f"{self.config.kind.value} is not installed: pip install {self.config.kind.value}"
            )
        cfg = self.config
        self.port = cfg.port or _free_port(cfg.host)
        fd, name = tempfile.mkstemp(prefix="grm-router-", suffix=".log")
        self.log_path = Path(name)
        with open(fd, "w") as out:
            self.proc = subprocess.Popen(
                cfg.command(self.worker_urls, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        # bounded whatever the caller does (a test that never stops it, a hung shutdown)
        self._watchdog = threading.Timer(cfg.max_lifetime, self.proc.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        deadline = time.monotonic() + cfg.start_timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.root + "/health", timeout=2).status_code == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cfg.kind.value} did not become ready:\n{self.log()[-2000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the router drains), then SIGKILL after ``timeout`` seconds."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self._log_text = self.log()
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JudgeFleet:
    """``replicas`` simulated judge servers (one ``SimServer``, one port per replica) behind a
    router: the whole fleet in one context manager, for tests and benchmarks.

    ``url`` is the router's base URL; ``server`` the ``SimServer`` (its ``stats().per_replica``
    counts the requests each replica got); ``router`` the ``Router``.

    Example:
        >>> from grm_plugin import GenerativeRewardFn
        >>> with JudgeFleet(replicas=2, policy="cache_aware") as fleet:  # doctest: +SKIP
        ...     GenerativeRewardFn(fleet.url, samples=2).score("Hi", ["hi", "hello there"]).scores
        [3.0, 10.0]
    """

    def __init__(
        self,
        replicas: int = 2,
        policy: RouterPolicy | str = RouterPolicy.ROUND_ROBIN,
        *,
        sim_config: SimServerConfig | dict | None = None,
        router_config: RouterConfig | dict | None = None,
    ) -> None:
        if not isinstance(sim_config, SimServerConfig):
            sim_config = SimServerConfig.model_validate(sim_config or {})
        self.server = SimServer(sim_config.model_copy(update={"replicas": replicas}))
        if isinstance(router_config, RouterConfig):
            router_config = router_config.model_dump()
        self.router_config = RouterConfig.model_validate(
            {**(router_config or {}), "policy": RouterPolicy(policy)}
        )
        self.router: Router | None = None

    @property
    def url(self) -> str:
        """The router's OpenAI-compatible base URL."""
        if self.router is None:
            raise RuntimeError("the fleet is not started")
        return self.router.url

    def stats(self) -> SimStats:
        """The replicas' work so far (``per_replica``: requests each got)."""
        return self.server.stats()

    def start(self) -> JudgeFleet:
        """Start the replicas, then the router in front of them."""
        self.server.start()
        try:
            self.router = Router(self.server.urls, self.router_config).start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the router, then the replicas."""
        if self.router is not None:
            self.router.stop()
        self.server.stop()

    def __enter__(self) -> JudgeFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
