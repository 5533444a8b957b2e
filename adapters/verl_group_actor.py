"""One place per verl job where a uid's samples meet, when verl runs several reward workers.

verl 0.9.1's reward loop cuts a batch into ``reward.num_workers`` contiguous chunks (or, when
rewards stream from the rollout, sends each sample to the next worker), so one uid's samples
reach two worker processes and each would judge its part alone. With ``num_workers > 1`` under
Ray the ``grm`` manager therefore sends each sample (a ``JudgeRequest``) to one named Ray actor
per job and judging configuration, ``GroupJudgeActor``: it runs the adapter's in-process path
(``VerlJudging``: group window, chunks of ``group_size``, the judge client, the Deadline) for
every worker, so a uid is judged as in one process. The actor instance owns that judging state;
this module holds none.

- The first worker to ask creates the actor (``get_if_exists=True``: one actor whatever the
  race); it needs no CPU reservation (it waits on the judge) and is owned by that worker.
- A sample whose actor dies (killed, or with the worker that owned it) is resent to a new
  actor with the seconds already spent, so it keeps one deadline; judging is idempotent. After
  ``MAX_SENDS`` failed sends the worker judges it itself (its group may be split then, but the
  sample is not lost).

Example:
    >>> actor_name("01000000", "abc")
    'grm-verl-groups-01000000-abc'
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

from grm_plugin.adapters.verl import JudgeRequest, VerlJudging, VerlSettings

__all__ = ["MAX_SENDS", "NAMESPACE", "GroupJudgeActor", "GroupRouter", "actor_name", "group_router"]

log = logging.getLogger(__name__)

#: Ray namespace of the actors: the same whatever namespace verl's driver uses
NAMESPACE = "grm_plugin"
#: sends of one sample to the job's actor before its worker judges it itself
MAX_SENDS = 3
#: concurrent calls one actor takes (Ray's default, 1000, would queue a large step's samples
#: behind each other and stall the group window)
MAX_CONCURRENCY = 100_000


def actor_name(job_id: str, judge_digest: str) -> str:
    """The actor's name: one per Ray job and judging configuration."""
    return f"grm-verl-groups-{job_id}-{judge_digest}"


class GroupJudgeActor:
    """Ray actor (async: all calls share one event loop, so one ``GroupBatcher``) that judges
    every reward worker's samples with the adapter's in-process path, in its own state."""

    def __init__(self) -> None:
        self.judging = VerlJudging()

    async def judge(self, request: JudgeRequest) -> dict[str, float]:
        return await self.judging.judge(request)

    async def stats(self) -> dict[str, int]:
        """Judge calls and items of this actor's batchers (for tests and logs)."""
        return self.judging.stats()


class GroupRouter:
    """A reward worker's side: sends samples to the job's ``GroupJudgeActor``; ``fallback``
    (the worker's own judging state) judges a sample the actor could not take."""

    def __init__(self, name: str, fallback: VerlJudging) -> None:
        self.name = name
        self.fallback = fallback
        self._handle: Any = None
        self._lock: asyncio.Lock | None = None

    def _get_or_create(self) -> Any:
        import ray

        return (
            ray.remote(GroupJudgeActor)
            .options(
                name=self.name,
                namespace=NAMESPACE,
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=MAX_CONCURRENCY,
            )
            .remote()
        )

    async def _actor(self) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one lookup per worker, not one per waiting sample
            if self._handle is None:
                self._handle = await asyncio.to_thread(self._get_or_create)
            return self._handle

    async def judge(self, request: JudgeRequest) -> dict[str, float]:
        """The sample's reward, judged with the others of its group in the job's actor."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        start = time.monotonic()
        error: Exception | None = None
        for send in range(MAX_SENDS):
            handle = await self._actor()
            spent = request.spent + time.monotonic() - start
            try:
                return await handle.judge.remote(dataclasses.replace(request, spent=spent))
            except (RayActorError, ActorUnavailableError) as e:
                error = e
                log.warning(
                    "grm group actor %s failed (send %d of %d), resending: %s",
                    self.name,
                    send + 1,
                    MAX_SENDS,
                    e,
                )
                if self._handle is handle:
                    self._handle = None
        log.error(
            "grm group actor %s unreachable after %d sends (%s): judging in this worker",
            self.name,
            MAX_SENDS,
            error,
        )
        spent = request.spent + time.monotonic() - start
        return await self.fallback.judge(dataclasses.replace(request, spent=spent))


def group_router(
    settings: VerlSettings,
    router_address: str | None,
    num_workers: Any,
    expected: int | None,
    fallback: VerlJudging,
) -> GroupRouter | None:
    """The router when a uid's samples may reach several workers and must meet: the manager
    runs in one of ``num_workers`` > 1 reward workers under Ray, groups hold more than one
    response and ``group_actor`` is on; None otherwise (the in-process path)."""
    if not (isinstance(num_workers, int) and num_workers > 1):
        return None
    if not settings.group_actor or settings.chunk_size(expected) <= 1:
        return None
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    # the same name in every worker: settings from verl's config are plain data (a policy
    # ``scale`` given as a function cannot come through Hydra)
    key = json.dumps([settings.model_dump(), router_address, expected], sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return GroupRouter(actor_name(ray.get_runtime_context().get_job_id(), digest), fallback)
