"""A judge fleet behind a real router (vllm-router): score_batch, a replica killed mid-run, and
``grm-plugin serve`` through it. Loopback only, bounded in count and time; the router tests skip
when vllm-router is not installed (``pip install vllm-router==0.1.17``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pydantic
import pytest

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.testing import (
    RouterConfig,
    RouterPolicy,
    SimServerProcess,
    router_available,
)
from grm_plugin.testing.pytest_plugin import _server_config
from grm_plugin.testing.router import SUPPORTED, Router, RouterKind

needs_router = pytest.mark.skipif(
    not router_available(), reason="vllm-router is not installed (pip install vllm-router==0.1.17)"
)

#: the policies the issue asks about; each keeps every request answered
POLICIES = [RouterPolicy.ROUND_ROBIN, RouterPolicy.CACHE_AWARE, RouterPolicy.CONSISTENT_HASH]
#: length_score of "hi" and "hello there" (grm_plugin.testing.engines)
EXPECTED = [3.0, 10.0]


def items(n: int) -> tuple[list[str], list[list[str]]]:
    return [f"Item {i}: say hi" for i in range(n)], [["hi", "hello there"]] * n


def make_rm(url: str, samples: int, concurrency: int = 64) -> GenerativeRewardFn:
    config = {
        "engine": {
            "type": "openai",
            "base_url": url,
            "model": "sim-judge",
            "concurrency": concurrency,
        },
        "sampling": {"samples": samples},
    }
    return GenerativeRewardFn.from_config(JudgeConfig.model_validate(config))


# ------------------------------------------------------------------ config (no router needed)


def test_router_binds_loopback_only():
    with pytest.raises(pydantic.ValidationError, match="loopback"):
        RouterConfig(host="0.0.0.0")


def test_sglang_router_has_no_consistent_hash():
    with pytest.raises(pydantic.ValidationError, match="consistent_hash"):
        RouterConfig(kind="sglang-router", policy="consistent_hash")


def test_router_command_gives_worker_roots():
    cmd = RouterConfig(policy="cache_aware").command(
        ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1/"], 3
    )
    i = cmd.index("--worker-urls")
    assert cmd[i + 1 : i + 3] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert cmd[cmd.index("--policy") + 1] == "cache_aware"


# ------------------------------------------------------------------ through the router


#: (router, policy): every policy of vllm-router we document, and sglang-router's when installed
ROUTED = [(RouterKind.VLLM, p) for p in POLICIES] + [
    (RouterKind.SGLANG, p) for p in POLICIES if p in SUPPORTED[RouterKind.SGLANG]
]


@pytest.mark.parametrize(("kind", "policy"), ROUTED, ids=lambda x: x.value)
def test_score_batch_through_router(grm_judge_router_factory, kind, policy):
    fleet = grm_judge_router_factory(policy.value, replicas=2, kind=kind.value)
    prompts, responses = items(24)
    results = make_rm(fleet.url, samples=4).score_batch(prompts, responses)
    assert [r.scores for r in results] == [EXPECTED] * 24
    assert not any(r.failed for r in results)
    per_replica = fleet.stats().per_replica
    assert sum(per_replica) >= 24  # every item went through the router to a replica
    if policy is RouterPolicy.ROUND_ROBIN:
        assert min(per_replica) > 0, per_replica


@needs_router
def test_router_stops_and_frees_its_port(grm_judge_server):
    with Router([grm_judge_server.url]) as router:
        assert httpx.get(router.root + "/health", timeout=5).status_code == 200
        proc = router.proc
    assert proc is not None and proc.poll() is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(router.root + "/health", timeout=2)


@pytest.mark.parametrize(("kind", "policy"), ROUTED, ids=lambda x: x.value)
def test_replica_killed_mid_run_loses_nothing(kind, policy):
    if not router_available(kind):
        pytest.skip(f"{kind.value} is not installed")
    # each replica in its own process, so that one can be SIGKILLed like a crashed server;
    # 50 ms per request and 4 in flight make the run last long enough to kill in its middle
    cfg = _server_config({"capacity": {"request_overhead": 0.05}})
    n = 40
    killed = threading.Event()
    seen_at_kill: dict[str, int] = {}
    with SimServerProcess(cfg) as a, SimServerProcess(cfg) as b:
        replicas = {"a": a, "b": b}
        with Router([a.urls[0], b.urls[0]], {"kind": kind, "policy": policy}) as router:

            def kill_the_busy_one() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    counts = {k: r.stats().requests for k, r in replicas.items()}
                    if sum(counts.values()) >= 8:
                        victim = max(counts, key=counts.__getitem__)
                        replicas[victim].proc.kill()
                        seen_at_kill.update(counts, victim=victim)
                        killed.set()
                        return
                    time.sleep(0.01)

            killer = threading.Thread(target=kill_the_busy_one, daemon=True)
            killer.start()
            prompts, responses = items(n)
            results = make_rm(router.url, samples=4, concurrency=4).score_batch(prompts, responses)
            killer.join(60)
            assert killed.is_set(), "the replica was not killed"
            survivor = "b" if seen_at_kill["victim"] == "a" else "a"
            after = replicas[survivor].stats().requests
    assert [r.error for r in results if r.failed] == []
    assert [r.scores for r in results] == [EXPECTED] * n
    # killed mid-run: the survivor answered work that was left when the other one died
    assert after > seen_at_kill[survivor]
    assert seen_at_kill["a"] + seen_at_kill["b"] < 2 * n


@pytest.fixture
def grm_judge_config(grm_judge_router):
    """The plugin's judge config, pointed at the router instead of one server: the plugin's
    ``grm_reward_server`` then runs ``grm-plugin serve`` on the fleet."""
    return {
        "engine": {
            "type": "openai",
            "base_url": grm_judge_router.url,
            "model": "sim-judge",
            "max_retries": 1,
        },
        "sampling": {"samples": 2},
    }


@needs_router
def test_serve_through_router(grm_judge_router, grm_reward_server):
    prompt = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    answers = ["hi", "hello there", "hey"]
    body = {
        "query": [prompt + a + "<|im_end|>" for a in answers],
        "prompts": [prompt] * len(answers),
        "labels": [""] * len(answers),
    }
    r = httpx.post(grm_reward_server, json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["extra_logs"]["grm_failed"] == [0.0] * len(answers)
    hi, hello_there, hey = out["rewards"]
    assert hi < hey < hello_there  # length_score's order: the judge's verdicts came back
    assert sum(grm_judge_router.stats().per_replica) >= 1


@needs_router
def test_router_dies_with_its_parent(grm_judge_server):
    # a parent killed by SIGKILL runs no cleanup: PR_SET_PDEATHSIG must stop the router
    script = (
        "import sys, time\n"
        "from grm_plugin.testing.router import Router\n"
        "r = Router([sys.argv[1]]).start()\n"
        "print(r.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, grm_judge_server.url], stdout=subprocess.PIPE, text=True
    )
    try:
        router_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if psutil.Process(router_pid).status() == psutil.STATUS_ZOMBIE:
                    break  # dead, not yet reaped by whoever adopted it
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        else:
            os.kill(router_pid, signal.SIGKILL)
            pytest.fail("the router outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


@needs_router
def test_at_scale_router_cells_run(tmp_path):
    """``benchmarks/at_scale.py --router-only``, tiny: every balancing answers every item and
    reports b/c, the prefix-cache hit rate and the per-replica split."""

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "at_scale.py"
    out = tmp_path / "at_scale_router"
    cmd = [sys.executable, str(script), "--router-only", "--router-cells", "6x2"]
    cmd += ["--router-policies", "client,cache_aware", "--router-workloads", "pairs,groups"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["workload"], r["policy"], r["b"]["answered"]) for r in rows] == [
        ("pairs", "client", 6),
        ("pairs", "cache_aware", 6),
        ("groups", "client", 6),
        ("groups", "cache_aware", 6),
    ]
    for r in rows:
        assert 0.0 <= r["c"]["prefix_hit_rate"] < 1.0
        assert sum(r["c"]["per_replica_requests"]) == r["c"]["requests"] > 0
    assert "| groups | cache_aware | 6 | 2 |" in out.with_suffix(".md").read_text()


# ------------------------------------------------------------------ the README's commands


def past_one_machine_commands() -> list[str]:
    """The shell lines of the README's "Past one machine" section (continuations joined)."""

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Past one machine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_readme_router_pin_is_the_tested_one():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = [
        d.split(";")[0].strip()
        for d in pyproject["project"]["optional-dependencies"]["test"]
        if d.startswith("vllm-router")
    ]
    installs = [c for c in past_one_machine_commands() if c.startswith("pip install")]
    assert installs == [f"pip install {pins[0]}"]


@needs_router
def test_readme_router_command_parses_with_the_router_itself():

    from vllm_router.launch_router import parse_router_args

    commands = [c for c in past_one_machine_commands() if c.startswith("vllm-router ")]
    assert commands, "the README shows no vllm-router command"
    for command in commands:
        args = parse_router_args(shlex.split(command)[1:])  # exits on an unknown flag
        assert RouterPolicy(args.policy)
        assert len(args.worker_urls) >= 2
    # grm-plugin's own commands there are parsed by tests/test_readme_cli.py
    assert any(c.startswith("grm-plugin serve --server") for c in past_one_machine_commands())


# ------------------------------------------------------------------ maintainers' examples

PROBE = """
from grm_plugin import GenerativeRewardFn, JudgeConfig


def test_fixtures_go_through_the_router(grm_judge_server, grm_judge_config):
    assert grm_judge_config["engine"]["base_url"] not in grm_judge_server.urls
    rm = GenerativeRewardFn.from_config(JudgeConfig.model_validate(grm_judge_config))
    results = rm.score_batch([f"Item {i}: say hi" for i in range(8)], [["hi", "hello there"]] * 8)
    assert [r.scores for r in results] == [[3.0, 10.0]] * 8
    assert min(grm_judge_server.stats().per_replica) > 0  # round_robin: both replicas judged
"""


@needs_router
def test_maintainers_examples_run_through_the_router(tmp_path):
    """The README's command, as written (plus a probe that checks the routing): each adapter's
    maintainer example, unchanged, with its judge as 2 replicas behind vllm-router."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    (command,) = [c for c in past_one_machine_commands() if c.startswith("python -m pytest")]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "pytest"]
    cmd = [sys.executable, *argv[1:], str(probe), "-q", "-p", "no:cacheprovider"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout, proc.stdout[-2000:]
