"""Core API defects of issue 13 (items 9-15) and the deadline object of issue 12 (item 4).

Each test reproduces a defect from outside (a forked child, many event loops, a cancelled
batch, a judge that misbehaves) and checks the fixed behaviour. Time bounds are generous
bounds on a hang, never performance asserts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading

import pytest
from pydantic import ValidationError

from grm_plugin import Deadline, FailureKind, GenerativeRewardFn, JudgeConfig, OpenAIEngineConfig
from grm_plugin.deadline import Expiry
from grm_plugin.engines import EngineError, GenerationRequest, JudgeEngine
from grm_plugin.engines.openai_engine import OpenAIEngine
from grm_plugin.reward import run_sync
from grm_plugin.testing import RuleJudgeEngine, shown_responses

from .openai_fakes import FakeOpenAIServer, completion


class StallingJudge(JudgeEngine):
    """Judges by length at once, except responses containing ``stall``, which never answer
    until ``release`` is set; counts the generate calls that were cancelled."""

    def __init__(self, stall: str = "STALL") -> None:
        self.stall = stall
        self.rule = RuleJudgeEngine()
        self.started = 0
        self.cancelled = 0
        self.release: asyncio.Event | None = None

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.started += 1
        if any(self.stall in r for r in shown_responses(request)):
            self.release = self.release or asyncio.Event()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await self.rule.generate(request)


# --------------------------------------------------------------------- issue 12 item 4: deadline


def test_batch_deadline_returns_what_was_judged_and_flags_the_stalled_item():
    judge = StallingJudge()
    rm = GenerativeRewardFn(judge, deadline=Deadline(batch=1.0))
    box: dict = {}
    worker = threading.Thread(
        target=lambda: box.update(
            out=rm.score_batch(["Q1", "Q2", "Q3"], [["aa"], ["STALL here"], ["aaaa"]])
        ),
        daemon=True,
    )
    worker.start()
    worker.join(30)  # a bound on a hang: the batch deadline is 1 s
    assert not worker.is_alive(), "score_batch did not return at its batch deadline"
    out = box["out"]
    assert out[0].scores == [3.0] and out[2].scores == [5.0]  # judged before the deadline
    stalled = out[1]
    assert stalled.failed and stalled.scores == [None]
    assert stalled.failure_kind is FailureKind.TIMEOUT
    assert stalled.flags == [["timeout"]]
    assert "batch deadline" in stalled.error


def test_batch_deadline_per_call_overrides_the_configured_one():
    rm = GenerativeRewardFn(StallingJudge(), deadline={"batch": 600})
    out = rm.score_batch(["Q"], [["STALL"]], deadline=0.3)
    assert out[0].failure_kind is FailureKind.TIMEOUT


def test_item_expiry_is_shared_by_every_call_not_restarted():
    # the engine used to start its own clock in each generate(); now the item's expiry travels
    # with the request, so a request that starts late gets only what is left of it
    with FakeOpenAIServer(lambda b, i: 3.0) as srv:
        eng = OpenAIEngine(OpenAIEngineConfig(base_url=srv.url, model="m", max_retries=5))
        expiry = Expiry.after(0.5)
        request = GenerationRequest([{"role": "user", "content": "x"}], request_timeout=30)
        request.expiry = expiry
        with pytest.raises(EngineError):
            run_sync(eng.generate(request))
        assert expiry.passed()
        # it gave up at the expiry, before the server's first answer (3 s): 30 s per try and 5
        # retries would have waited for it
        assert expiry.remaining() > -2.5


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("sampling", {"deadline": 3}, "deadline.item"),
        ("engine", {"type": "openai", "base_url": "http://x/v1", "timeout": 3}, "deadline.request"),
        ("engine", {"type": "openai", "base_url": "http://x/v1", "deadline": 3}, "deadline.item"),
    ],
)
def test_old_deadline_keys_name_the_new_key(section, old, new):
    with pytest.raises(ValidationError, match=new.replace(".", r"\.")):
        JudgeConfig.model_validate({section: old})


def test_deadline_has_named_parts():
    cfg = JudgeConfig.model_validate({"deadline": {"request": 30, "item": 90, "batch": 300}})
    assert (cfg.deadline.request, cfg.deadline.item, cfg.deadline.batch) == (30, 90, 300)
    with pytest.raises(ValidationError, match="named parts"):
        JudgeConfig.model_validate({"deadline": 30})
    with pytest.raises(ValidationError, match="named parts"):
        GenerativeRewardFn(RuleJudgeEngine(), deadline=30)
    rm = GenerativeRewardFn.from_config(cfg, engine=RuleJudgeEngine())
    assert rm.deadline.item == 90


# ------------------------------------------------------------------ issue 13 items 9-15: core API


def _score_in_child(rm: GenerativeRewardFn, q) -> None:
    q.put(rm.score("Q", ["abc"]).scores)


def test_score_works_in_a_forked_child():
    rm = GenerativeRewardFn(RuleJudgeEngine())
    assert rm.score("Q", ["abc"]).scores == [4.0]  # the parent's background loop is running
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_score_in_child, args=(rm, q))
    child.start()
    child.join(60)  # a bound on a hang
    if child.is_alive():
        child.kill()
        pytest.fail("score() hung in a forked child")
    assert child.exitcode == 0
    assert q.get(timeout=5) == [4.0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_openai_clients_do_not_leak_across_event_loops():
    with FakeOpenAIServer(lambda b, i: completion(["Final Scores: [[6]]"])) as srv:
        rm = GenerativeRewardFn(OpenAIEngineConfig(base_url=srv.url, model="m"))
        asyncio.run(rm.ascore("Q", ["a"]))
        before = _open_fds()
        for i in range(40):  # distinct prompts: each is a real request (no cached judgment)
            assert asyncio.run(rm.ascore(f"Q{i}", ["a"])).scores == [6.0]
        assert len(srv.bodies) == 41
        # one client (and socket) per loop used to stay open: +40 here, EMFILE eventually
        assert _open_fds() - before < 10
        assert len(rm.engine._loops) <= 1


def test_cancelling_ascore_batch_cancels_its_items():
    judge = StallingJudge()
    rm = GenerativeRewardFn(judge)

    async def main() -> None:
        prompts = [f"Q{i}" for i in range(4)]  # distinct: identical items share a judgment
        task = asyncio.ensure_future(rm.ascore_batch(prompts, [["STALL"]] * 4))
        for _ in range(1000):  # a bound on a hang
            if judge.started == 4:
                break
            await asyncio.sleep(0.01)
        assert judge.started == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # let the cancellations land (asyncio.run would cancel later)
            await asyncio.sleep(0.01)
        # checked while the loop still runs: nothing is judged after the caller gave up
        assert judge.cancelled == 4

    asyncio.run(main())


class CancellingJudge(RuleJudgeEngine):
    """Raises CancelledError by itself (as a dying worker can) for responses with "boom"."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        if any("boom" in r for r in shown_responses(request)):
            raise asyncio.CancelledError("worker stopped")
        return await super().generate(request)


def test_an_engines_own_cancelled_error_fails_one_item_not_the_batch():
    rm = GenerativeRewardFn(CancellingJudge())
    out = rm.score_batch(["Q1", "Q2", "Q3"], [["aa"], ["boom"], ["aaa"]])
    assert out[0].scores == [3.0] and out[2].scores == [4.0]
    assert out[1].failed and out[1].failure_kind is FailureKind.ENGINE


class NonTextJudge(JudgeEngine):
    def __init__(self, out: object) -> None:
        self.out = out

    async def generate(self, request: GenerationRequest) -> list[str]:
        return self.out  # type: ignore[return-value]


@pytest.mark.parametrize("out", [[5], [None], None, "Final Scores: [[5]]"])
def test_non_text_from_an_engine_is_an_engine_failure(out):
    rm = GenerativeRewardFn(NonTextJudge(out), parse_retries=0)
    res = rm.score("Q", ["a"])  # no TypeError: the caller's input is fine
    assert res.failed and res.failure_kind is FailureKind.ENGINE
    batch = rm.score_batch(["Q"], [["a"]])
    assert batch[0].failure_kind is FailureKind.ENGINE and "bad input" not in batch[0].error


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [None]},
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}],
        },
    ],
    ids=["null-choice", "numeric-content"],
)
def test_judge_server_non_text_answer_is_an_engine_failure(body):
    with FakeOpenAIServer(lambda b, i: body) as srv:
        rm = GenerativeRewardFn(OpenAIEngineConfig(base_url=srv.url, model="m"), parse_retries=0)
        res = rm.score("Q", ["a"])
        assert res.failed and res.failure_kind is FailureKind.ENGINE
        assert "malformed completion" in res.error
        batch = rm.score_batch(["Q"], [["a"]])
        assert batch[0].failure_kind is FailureKind.ENGINE


def test_references_must_be_a_list():
    rm = GenerativeRewardFn(RuleJudgeEngine())
    with pytest.raises(TypeError, match="references must be a list"):
        rm.score_batch(["Q1", "Q2", "Q3"], [["a"], ["b"], ["c"]], references="xyz")
    with pytest.raises(TypeError, match="prompts must be a list"):
        rm.score_batch("Q", [["a"]])


def test_reward_fn_with_the_openai_engine_pickles_as_its_config():
    with FakeOpenAIServer(lambda b, i: completion(["Final Scores: [[7]]"])) as srv:
        cfg = OpenAIEngineConfig(base_url=srv.url, model="m")
        for rm in (
            GenerativeRewardFn(cfg, samples=2, deadline={"item": 60}),
            GenerativeRewardFn(srv.url, samples=2),
            GenerativeRewardFn.from_config({"engine": cfg.model_dump()}),
            GenerativeRewardFn(OpenAIEngine(cfg)),  # an engine instance pickles as its config
        ):
            assert rm.score("Q", ["a"]).scores == [7.0]  # clients exist now
            again = pickle.loads(pickle.dumps(rm))
            assert again.engine is not rm.engine
            assert again.engine.config == rm.engine.config
            assert again.deadline == rm.deadline
            before = len(srv.bodies)
            assert again.score("Another Q", ["a"]).scores == [7.0]  # not a cached judgment
            assert len(srv.bodies) > before  # the rebuilt engine asked the server


class LockedJudge(RuleJudgeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def test_unpicklable_engine_gets_a_clear_message():
    with pytest.raises(TypeError, match="Build it from a spec"):
        pickle.dumps(GenerativeRewardFn(LockedJudge()))


# ------------------------------------------------------------- issue 13 item 16: eval, no plot


def test_eval_without_matplotlib_warns_first_and_writes_the_report(tmp_path, monkeypatch, capsys):
    import sys

    import grm_plugin.reward as reward
    from grm_plugin.cli.main import main

    from .test_evaluation import items, marker_score

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    seen_before_judging: list[str] = []

    def engine(spec):
        seen_before_judging.append(capsys.readouterr().err)
        return RuleJudgeEngine(marker_score)

    monkeypatch.setattr(reward, "make_engine", engine)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(it.model_dump_json() + "\n" for it in items(2, 1, 0)))
    out = tmp_path / "out"
    assert main(["eval", str(data), "--samples", "1,2", "--out", str(out), "--no-progress"]) == 0
    assert "grm-plugin[plot]" in seen_before_judging[0]  # told before the work, not after
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    assert not (out / "accuracy_vs_k.png").exists()
