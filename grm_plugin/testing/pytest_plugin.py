"""pytest plugin: fixtures for testing an RL framework against a generative reward model, with no
GPU and no model. Loaded automatically once grm-plugin is installed (entry point ``pytest11``).

Fixtures:

- ``grm_judge_server``: a simulated judge server (``SimServer``) on 127.0.0.1, fast, judging by
  ``length_score``; script it with ``.faults.inject(FaultKind.SERVER_ERROR, times=3)``,
  ``.script([...texts])``; ``.url`` is an OpenAI-compatible base URL, ``.stats()`` counts.
- ``grm_judge_server_factory``: ``make(config=None, score_fn=None)`` for other capacities,
  fault rates, replicas or rules; every server is stopped after the test.
- ``grm_rule_engine``: the same rule as an in-process engine (no HTTP).
- ``grm_judge_config`` / ``grm_judge_config_file``: a judge config (dict / YAML file) pointing
  at ``grm_judge_server``, for ``GRM_PLUGIN_CONFIG`` or any adapter taking a config.
- ``grm_reward_server``: ``grm-plugin serve`` on that judge; its value is the OpenRLHF remote
  reward URL (``.../get_reward``).
- ``grm_judge_router_factory``: ``make(policy="round_robin", replicas=2, config=None,
  kind="vllm-router")``: a
  ``JudgeFleet``, i.e. that many fast simulated replicas behind a real router (``vllm-router``,
  ``pip install vllm-router==0.1.17``; the test is skipped when it is not installed);
  ``.url`` is the router's base URL, ``.stats().per_replica`` the requests each replica got.
- ``grm_judge_router``: the same with 2 replicas and ``round_robin``.
- ``pytest --grm-judge-router POLICY``: every fixture above that uses ``grm_judge_server`` goes
  through that router in front of its 2 replicas (``grm_judge_url`` is the URL they use), so a
  framework's existing tests run against a judge fleet unchanged.
- ``grm_hack_cases``: the built-in hack battery on the first 5 built-in prompts (``HackCase``:
  ``.hack``, ``.family``, ``.prompt``, ``.response``, ``.right``), to assert that a judge scores
  them below the right answer; ``grm_plugin.testing.assert_judge_rejects(rm)`` runs the whole
  audit as one assertion.

Check results with ``grm_plugin.testing.assert_group_rewards``. Everything binds loopback and is
bounded in time (servers stop by themselves after ``max_lifetime``).

Example (a test file; the fixtures need no import):
    >>> def test_reward(grm_judge_server):  # doctest: +SKIP
    ...     reward = GRMReward(engine=grm_judge_server.url, samples=2)
    ...     completions = ["4", "four"]
    ...     rewards = asyncio.run(reward(prompts=["2+2?"] * 2, completions=completions))
    ...     assert_group_rewards(rewards, completions)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .engines import RuleJudgeEngine
    from .hacks import HackCase
    from .router import JudgeFleet
    from .sim_server import SimServer, SimServerConfig

# grm-plugin itself is imported inside the fixtures: pytest loads this plugin in every run
# where grm-plugin is installed, and a run that uses none of it must not pay for (or fail on)
# importing it

#: a judge that answers in milliseconds: tests exercise the wiring, not the capacity
TEST_CAPACITY = {
    "decode_tps": 1e6,
    "decode_tps_per_seq": 1e5,
    "prefill_tps": 1e7,
    "prefill_tps_per_seq": 1e7,
    "output_tokens": 16,
    "request_overhead": 0.0,
}
#: no test server outlives this (seconds), whatever the test does
TEST_LIFETIME = 600.0
#: seconds ``grm-plugin serve`` gets to come up
SERVE_START_TIMEOUT = 60.0


def _server_config(config: SimServerConfig | dict | None) -> SimServerConfig:
    from .sim_server import SimServerConfig

    if isinstance(config, SimServerConfig):
        return config
    data = dict(config or {})
    data["capacity"] = {**TEST_CAPACITY, **data.get("capacity", {})}
    data.setdefault("max_lifetime", TEST_LIFETIME)
    data.setdefault("max_requests", 100_000)
    return SimServerConfig.model_validate(data)


@pytest.fixture
def grm_judge_server_factory() -> Iterator[Callable[..., SimServer]]:
    """``make(config=None, score_fn=None) -> SimServer`` (started; stopped after the test).
    ``config`` is a ``SimServerConfig`` or a dict of its fields (capacity merged onto the fast
    test capacity)."""
    from .sim_server import SimServer

    servers: list[SimServer] = []

    def make(
        config: SimServerConfig | dict | None = None,
        score_fn: Callable[[str], float] | None = None,
    ) -> SimServer:
        server = SimServer(_server_config(config), score_fn=score_fn).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("grm-plugin").addoption(
        "--grm-judge-router",
        default=None,
        metavar="POLICY",
        help="put vllm-router (this policy: round_robin, cache_aware, consistent_hash) in front "
        "of grm_judge_server, which then has 2 replicas; grm_judge_config points at the router",
    )


@pytest.fixture
def grm_judge_server(
    grm_judge_server_factory: Callable[..., SimServer], request: pytest.FixtureRequest
) -> SimServer:
    """A fast simulated judge server scoring by ``length_score`` (2 replicas behind a router
    with ``--grm-judge-router POLICY``; its faults and script are shared by both)."""
    routed = request.config.getoption("grm_judge_router", None)
    return grm_judge_server_factory({"replicas": 2} if routed else None)


@pytest.fixture
def grm_judge_url(grm_judge_server: SimServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The judge's base URL as the other fixtures use it: ``grm_judge_server.url``, or with
    ``--grm-judge-router POLICY`` a router's in front of its replicas."""
    policy = request.config.getoption("grm_judge_router", None)
    if not policy:
        yield grm_judge_server.url
        return
    from .router import Router, router_available

    if not router_available():
        pytest.skip("--grm-judge-router needs vllm-router (pip install vllm-router==0.1.17)")
    with Router(grm_judge_server.urls, {"policy": policy, "max_lifetime": TEST_LIFETIME}) as r:
        yield r.url


@pytest.fixture
def grm_rule_engine() -> RuleJudgeEngine:
    """An in-process engine answering by ``length_score`` (records its requests)."""
    from .engines import RuleJudgeEngine

    return RuleJudgeEngine()


@pytest.fixture
def grm_judge_config(grm_judge_url: str) -> dict[str, Any]:
    """A judge config (plain dict, ``JudgeConfig`` fields) using ``grm_judge_server``."""
    return {
        "engine": {
            "type": "openai",
            "base_url": grm_judge_url,
            "model": "sim-judge",
            "max_retries": 1,  # a single injected fault is retried; a judge that is down fails
        },
        "sampling": {"samples": 2},
    }


@pytest.fixture
def grm_judge_config_file(grm_judge_config: dict[str, Any], tmp_path: Path) -> Path:
    """``grm_judge_config`` written to a YAML file (e.g. for ``GRM_PLUGIN_CONFIG``)."""
    import yaml

    path = tmp_path / "grm_judge.yaml"
    path.write_text(yaml.safe_dump(grm_judge_config))
    return path


@pytest.fixture
def grm_hack_cases() -> list[HackCase]:
    """The built-in hack battery on the first 5 built-in prompts (``grm_plugin.testing.hacks``)."""
    from .hacks import hack_cases

    return hack_cases()


@pytest.fixture
def grm_judge_router_factory() -> Iterator[Callable[..., JudgeFleet]]:
    """``make(policy="round_robin", replicas=2, config=None, kind="vllm-router") -> JudgeFleet``
    (started; stopped after the test). ``config``: the replicas' ``SimServerConfig`` fields, as
    for ``grm_judge_server_factory``. Skips the test when that router is not installed."""
    from .router import JudgeFleet, router_available

    fleets: list[JudgeFleet] = []

    def make(
        policy: str = "round_robin",
        replicas: int = 2,
        config: SimServerConfig | dict | None = None,
        kind: str = "vllm-router",
    ) -> JudgeFleet:
        if not router_available(kind):
            pytest.skip(f"{kind} is not installed (pip install {kind})")
        fleet = JudgeFleet(
            replicas,
            policy,
            sim_config=_server_config(config),
            router_config={"kind": kind, "max_lifetime": TEST_LIFETIME},
        )
        fleets.append(fleet.start())
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def grm_judge_router(grm_judge_router_factory: Callable[..., JudgeFleet]) -> JudgeFleet:
    """2 fast simulated replicas behind ``vllm-router`` (``round_robin``)."""
    return grm_judge_router_factory()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def grm_reward_server(grm_judge_config_file: Path, tmp_path: Path) -> Iterator[str]:
    """``grm-plugin serve`` (OpenRLHF remote reward protocol) on ``grm_judge_server``, in a
    child process on 127.0.0.1; yields the URL for OpenRLHF's ``--reward.remote_url``."""
    import httpx

    from .sim_server import die_with_parent

    port = _free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from grm_plugin.cli.main import main; sys.exit(main())",
    ]
    cmd += ["serve", "--config", str(grm_judge_config_file), "--port", str(port)]
    log = tmp_path / "grm_reward_server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ},
            preexec_fn=die_with_parent,
        )
    # bounded in time whatever the test does: killed after TEST_LIFETIME
    watchdog = threading.Timer(TEST_LIFETIME, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while True:
            try:
                if httpx.get(root + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"grm-plugin serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield root + "/get_reward"
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
