"""One deadline end to end (issue 18): a caller's ``Expiry`` reaches the engine requests.

``ascore`` takes the caller's expiry (the sooner of it and ``deadline.item`` bounds the item),
``GroupBatcher`` takes one per item and hands each group's (its latest member's) to the judge,
the server makes one per request from its complete body (a forwarding front's header can only
shorten it), and OpenRLHF's in-process path one per call. Checked on the expiry the engine
request carries, compared with clock readings taken around the call: no speed assertion.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from grm_plugin import GenerativeRewardFn
from grm_plugin.adapters.openrlhf import OpenRLHFProtocol, OpenRLHFReward
from grm_plugin.deadline import NEVER, Expiry
from grm_plugin.engines import GenerationRequest
from grm_plugin.grouping import GroupBatcher, RewardItem
from grm_plugin.results import FailureKind
from grm_plugin.server import DEADLINE_HEADER, ServerSettings, create_app
from grm_plugin.testing import RuleJudgeEngine, shown_responses

from .openai_fakes import free_port
from .test_server_defects import body, raw_post, running

#: a bound on hangs only: every call here ends within a second or two
HANG_S = 30.0


class HangingJudge(RuleJudgeEngine):
    """Records each request, then never answers: only an expiry ends the item."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, HANG_S)

    return asyncio.run(bounded())


def _expiries(engine: RuleJudgeEngine) -> list[float | None]:
    return [r.expiry.at for r in engine.requests]


# ------------------------------------------------------------------------------------- Expiry


def test_later_is_the_last_of_two_and_never_wins():
    soon, late = Expiry(5.0), Expiry(9.0)
    assert soon.later(late) is late and late.later(soon) is late
    assert soon.later(NEVER) is NEVER and NEVER.later(soon) is NEVER


# -------------------------------------------------------------------------------------- ascore


def test_ascore_stops_at_a_callers_expiry_sooner_than_the_items_deadline():
    engine = HangingJudge()
    rm = GenerativeRewardFn(engine, deadline={"item": 600})
    given = Expiry.after(0.2)
    result = _run(rm.ascore("Say hi", ["hi"], expiry=given))
    assert result.failed and result.failure_kind is FailureKind.TIMEOUT
    assert engine.requests and _expiries(engine) == [given.at] * len(engine.requests)


def test_ascore_keeps_the_items_deadline_when_the_callers_expiry_is_later():
    engine = RuleJudgeEngine()
    rm = GenerativeRewardFn(engine, deadline={"item": 60})
    before = time.monotonic()
    result = _run(rm.ascore("Say hi", ["hi"], expiry=Expiry.after(3600)))
    after = time.monotonic()
    assert not result.failed
    for at in _expiries(engine):
        assert at is not None and before + 60 <= at <= after + 60


def test_ascore_without_an_expiry_bounds_the_item_by_its_deadline_only():
    engine = RuleJudgeEngine()
    _run(GenerativeRewardFn(engine).ascore("Say hi", ["hi"]))  # no deadline.item: no limit
    assert _expiries(engine) == [None] * len(engine.requests)


# ------------------------------------------------------------------------------- GroupBatcher


def test_the_batcher_hands_each_groups_latest_expiry_to_the_judge():
    engine = RuleJudgeEngine()
    batcher = GroupBatcher(GenerativeRewardFn(engine), window=5.0, max_size=2)
    early, late, alone = Expiry.after(100), Expiry.after(200), Expiry.after(50)

    async def judge_all() -> list:
        return await asyncio.gather(
            batcher.judge(RewardItem("Q", "a", group="g"), expiry=early),
            batcher.judge(RewardItem("Q", "bb", group="g"), expiry=late),  # fills the group
            batcher.judge(RewardItem("Q2", "ccc"), expiry=alone),  # no group: judged alone
        )

    judged = _run(judge_all())
    assert [j.score for j in judged] == [2.0, 3.0, 4.0]  # 1 + len
    by_group = {tuple(sorted(shown_responses(r))): r.expiry for r in engine.requests}
    assert by_group == {("a", "bb"): late, ("ccc",): alone}


def test_a_group_with_a_member_without_limit_is_judged_without_limit():
    engine = RuleJudgeEngine()
    batcher = GroupBatcher(GenerativeRewardFn(engine), window=5.0, max_size=2)

    async def judge_both() -> list:
        return await asyncio.gather(
            batcher.judge(RewardItem("Q", "a", group="g"), expiry=Expiry.after(100)),
            batcher.judge(RewardItem("Q", "bb", group="g"), expiry=NEVER),
        )

    _run(judge_both())
    assert engine.requests and _expiries(engine) == [None] * len(engine.requests)


def test_a_member_past_its_expiry_times_out_while_the_group_is_judged():
    engine = HangingJudge()
    batcher = GroupBatcher(GenerativeRewardFn(engine), window=0.05, max_size=2)

    early, late = Expiry.after(0.2), Expiry.after(0.4)

    async def judge_both() -> list:
        return await asyncio.gather(
            batcher.judge(RewardItem("Q", "a", group="g"), expiry=early),
            batcher.judge(RewardItem("Q", "bb", group="g"), expiry=late),
        )

    short, long = _run(judge_both())
    assert short.result.failure_kind is long.result.failure_kind is FailureKind.TIMEOUT
    # the judgment ran to the later member's expiry, and the engine was told so
    assert engine.requests and _expiries(engine) == [late.at] * len(engine.requests)


# ------------------------------------------------------------------------------------- server


def _server_expiry(headers: dict[str, str], deadline: float) -> tuple[float, float, float]:
    """(the engine request's expiry, a clock reading before the post, one after it)."""
    engine = RuleJudgeEngine()
    settings = ServerSettings(deadline=deadline, group_window=0)
    app = create_app(GenerativeRewardFn(engine), OpenRLHFProtocol(), settings)
    with TestClient(app) as client:
        before = time.monotonic()
        answer = client.post("/get_reward", json=body("hello"), headers=headers)
        after = time.monotonic()
    assert answer.status_code == 200 and answer.json()["extra_logs"]["grm_failed"] == [0.0]
    (at,) = set(_expiries(engine))
    assert at is not None
    return at, before, after


def test_the_servers_expiry_is_its_deadline_from_the_request():
    at, before, after = _server_expiry({}, deadline=100)
    assert before + 100 <= at <= after + 100


def test_a_forwarded_deadline_header_shortens_the_servers_expiry():
    at, before, after = _server_expiry({DEADLINE_HEADER: "7.5"}, deadline=100)
    assert before + 7.5 <= at <= after + 7.5


@pytest.mark.parametrize("given", ["200", "0", "-3", "nan", "inf", "soon"])
def test_a_forwarded_header_never_lengthens_or_zeroes_the_deadline(given):
    at, before, after = _server_expiry({DEADLINE_HEADER: given}, deadline=100)
    assert before + 100 <= at <= after + 100


def test_the_servers_expiry_starts_when_the_body_is_complete():
    """A body uploaded over about a second: the expiry counts from its last piece."""
    engine = RuleJudgeEngine()
    port = free_port()
    app = create_app(
        GenerativeRewardFn(engine),
        OpenRLHFProtocol(),
        ServerSettings(port=port, deadline=20, group_window=0),
    )
    last_piece: list[float] = []
    with running(app, port):
        answer = raw_post(
            port,
            json.dumps(body("hello")).encode(),
            4,
            0.3,
            lambda: last_piece.append(time.monotonic()),
        )
        after = time.monotonic()
    assert answer["extra_logs"]["grm_failed"] == [0.0]
    (at,) = set(_expiries(engine))
    assert at is not None and last_piece[0] + 20 <= at <= after + 20


# ----------------------------------------------------------------------- OpenRLHF in-process


def test_openrlhfs_call_gives_its_items_one_expiry_from_its_deadline():
    engine = RuleJudgeEngine()
    adapter = OpenRLHFReward(GenerativeRewardFn(engine), server=ServerSettings(group_window=0))
    prompt = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    queries = [prompt + a + "<|im_end|>" for a in ("one", "three")]
    before = time.monotonic()
    out = _run(adapter.areward(queries, [prompt] * 2, ["", ""], deadline=9.0))
    after = time.monotonic()
    assert out["extra_logs"]["grm_failed"] == [0.0, 0.0]
    (at,) = set(_expiries(engine))  # one clock for the call's two items
    assert at is not None and before + 9.0 <= at <= after + 9.0
