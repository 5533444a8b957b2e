"""Judgments per group and reward time, verl reward loop with 1 vs 2 workers (issue 20).

Run in verl's environment (not collected by pytest)::

    .nox/verl/bin/python tests/adapters/verl/measure_workers.py

verl's own ``RewardLoopManager`` (Ray actors) scores one batch of ``uids x 4`` responses with
the ``grm`` manager against a local fake OpenAI-compatible judge (instant answers, so the
times are the plumbing's: Ray hops, group window). Each cell: one warm-up step, then the
median of ``STEPS`` steps.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import pytest

# pytest's --doctest-modules imports this file too: outside verl's environment, skip it
pytest.importorskip("verl")
pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).parent))

import ray  # noqa: E402
from test_verl_adapter import (  # noqa: E402
    FakeRouter,
    _make_tokenizer,
    _workers_config,
    make_batch,
    responses_in_prompt,
)
from verl.experimental.reward_loop.reward_loop import RewardLoopManager  # noqa: E402

STEPS = 3
CELLS = [(1, False), (2, False), (2, True)]  # (num_workers, group_actor)


def main() -> None:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tok = _make_tokenizer()
    tokdir = "/tmp/grm_measure_tok"
    tok.save_pretrained(tokdir)
    print("| uids x 4 | to workers | workers | path | judgments per group | reward time (median) |")
    print("|---|---|---|---|---|---|")
    # 63: odd, so that verl's cut splits one group
    for uids, mode in ((3, "batch"), (63, "batch"), (63, "streaming")):
        for workers, actor in CELLS:
            with FakeRouter() as router:
                config = _workers_config(tokdir, router, group_actor=actor)
                config.reward.num_workers = workers
                manager = RewardLoopManager(config)
                times, judgments = [], []
                for step in range(STEPS + 1):
                    # new responses every step: the judge's training cache would answer repeats
                    samples = [
                        (f"u{g}", f"{g} answer {step} {workers} {actor} {'x' * i}")
                        for g in range(uids)
                        for i in range(4)
                    ]
                    batch = make_batch(tok, samples)
                    router.requests.clear()
                    t0 = time.perf_counter()
                    if mode == "batch":
                        manager.compute_rm_score(batch)
                    else:
                        pick = random.Random(step).choice
                        handles = manager.reward_loop_workers
                        refs = [
                            pick(handles).compute_score.remote(batch[i : i + 1])
                            for i in range(len(batch))
                        ]
                        ray.get(refs)
                    if step:  # the first step starts the actors
                        times.append(time.perf_counter() - t0)
                        judgments.append(len(router.requests))
                    shown = sum(
                        len(responses_in_prompt(b["messages"][-1]["content"]))
                        for b in router.requests
                    )
                    assert shown == len(samples), shown
                for h in manager.reward_loop_workers:
                    ray.kill(h)
            path = "group actor" if actor else "per-worker batcher"
            print(
                f"| {uids} | {mode} | {workers} | {path} "
                f"| {statistics.median(judgments) / uids:.3f} | {statistics.median(times):.2f} s |",
                flush=True,
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
