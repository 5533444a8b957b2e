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


@pytest.fixture
def grm_judge_server(grm_judge_server_factory: Callable[..., SimServer]) -> SimServer:
    """A fast simulated judge server scoring by ``length_score``."""
    return grm_judge_server_factory()


@pytest.fixture
def grm_rule_engine() -> RuleJudgeEngine:
    """An in-process engine answering by ``length_score`` (records its requests)."""
    from .engines import RuleJudgeEngine

    return RuleJudgeEngine()


@pytest.fixture
def grm_judge_config(grm_judge_server: SimServer) -> dict[str, Any]:
    """A judge config (plain dict, ``JudgeConfig`` fields) using ``grm_judge_server``."""
    return {
        "engine": {
            "type": "openai",
            "base_url": grm_judge_server.url,
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
