"""Tests that kill the review's surviving mutants (issue 18), through the public API only.

1. Timeout classification: a judge that misses its deadline is a ``timeout``, not ``engine``.
2. The batch deadline reaches the items: each engine request of ``score_batch`` carries an
   expiry no later than the batch's, so an engine that honours its expiry stops there.
3. The score-line prefill runs: a judgment without a score line is continued from the
   template's own score-line opener on an engine that continues an assistant turn.

The engines here are doubles that read the real judge prompt and go through the real parser.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from grm_plugin import (
    Deadline,
    FailureKind,
    GenerationRequest,
    GenerativeRewardFn,
    JudgeEngine,
    OpenAIEngineConfig,
    TransformersEngineConfig,
)
from grm_plugin.engines.errors import EngineError, EngineServerError, EngineTimeout
from grm_plugin.testing import RuleJudgeEngine, rule_judgment, shown_responses

from .openai_fakes import FakeOpenAIServer
from .tiny_model import build_tiny_model


def _judge(rm: GenerativeRewardFn, how: str, prompt: str, responses: list[str]):
    """One item judged through ``ascore`` or ``score_batch`` (both classify failures)."""
    if how == "ascore":
        return asyncio.run(rm.ascore(prompt, responses))
    (result,) = rm.score_batch([prompt], [responses])
    return result


# ------------------------------------------------------------- 1. timeout classification


@pytest.mark.parametrize("how", ["ascore", "score_batch"])
def test_a_judge_slower_than_the_request_deadline_on_every_try_is_a_timeout(how):
    # the real openai engine against a local server that answers after 2 s: each of the two
    # tries gives up at deadline.request (0.3 s), well within the 10 s item deadline
    with FakeOpenAIServer(lambda body, call: 2.0) as srv:
        rm = GenerativeRewardFn(
            OpenAIEngineConfig(base_url=srv.url, model="m", max_retries=1),
            samples=2,
            deadline=Deadline(request=0.3, item=10),
        )
        res = _judge(rm, how, "Q", ["a", "b"])
    assert res.failed and res.scores == [None, None]
    assert res.failure_kind is FailureKind.TIMEOUT
    assert res.samples and all(s.failure_kind is FailureKind.TIMEOUT for s in res.samples)
    # the message names the kind first: 'timeout: EngineTimeout: ...', never 'engine: ...'
    assert all(s.failure.split(":")[0] == "timeout" for s in res.samples)
    assert "engine:" not in res.error


class _Raises(JudgeEngine):
    """An engine double that fails every request with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def generate(self, request: GenerationRequest) -> list[str]:
        raise self.error


@pytest.mark.parametrize("how", ["ascore", "score_batch"])
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (EngineTimeout("no answer within 0.3s"), FailureKind.TIMEOUT),
        (TimeoutError("read timed out"), FailureKind.TIMEOUT),
        (asyncio.TimeoutError(), FailureKind.TIMEOUT),
        (EngineError("judge server unreachable"), FailureKind.ENGINE),
        (EngineServerError("HTTP 500"), FailureKind.ENGINE),
        (RuntimeError("engine bug"), FailureKind.ENGINE),
    ],
)
def test_an_engines_timeout_is_a_timeout_and_its_other_errors_stay_engine(error, kind, how):
    res = _judge(GenerativeRewardFn(_Raises(error), samples=2), how, "Q", ["a", "b"])
    assert res.failed and res.failure_kind is kind
    assert [s.failure_kind for s in res.samples] == [kind, kind]
    assert all(s.failure.split(":")[0] == kind.value for s in res.samples)


class _Hangs(JudgeEngine):
    """Sleeps past any deadline and ignores the expiry it is given (``honours_expiry`` is
    False), so the core's own guard must stop it."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        await asyncio.sleep(30)
        return []


@pytest.mark.parametrize("how", ["ascore", "score_batch"])
def test_an_engine_stopped_by_the_item_deadline_is_a_timeout(how):
    res = _judge(GenerativeRewardFn(_Hangs(), deadline=Deadline(item=0.3)), how, "Q", ["a"])
    assert res.failed and res.failure_kind is FailureKind.TIMEOUT
    assert res.samples[0].failure.split(":")[0] == "timeout"
    assert "engine:" not in res.error


class _TimesOutOnOneOrder(JudgeEngine):
    """Times out when 'a' is shown first and fails with a server error otherwise."""

    async def generate(self, request: GenerationRequest) -> list[str]:
        if shown_responses(request)[0] == "a":
            raise EngineTimeout("no answer within 0.3s")
        raise EngineServerError("HTTP 500")


def test_an_item_whose_samples_timed_out_or_failed_is_a_timeout():
    # two samples of two responses are shown in both orders: one times out, one fails; the
    # item's kind is the timeout (the cause that, with more time, could have given a score)
    rm = GenerativeRewardFn(_TimesOutOnOneOrder(), samples=2, seed=0)
    res = rm.score("Q", ["a", "bb"])
    assert sorted(s.failure_kind.value for s in res.samples) == ["engine", "timeout"]
    assert res.failure_kind is FailureKind.TIMEOUT


# ------------------------------------------------ 2. the batch deadline passed to the items


class _LocalLikeJudge(JudgeEngine):
    """Works like a local engine: each request is written by a thread that cancellation does
    not stop, which stops at the request's expiry (``honours_expiry``) or after
    ``work_seconds`` (within the item deadline), whichever comes first."""

    honours_expiry = True

    def __init__(self, work_seconds: float) -> None:
        self.work_seconds = work_seconds
        self.requests: list[GenerationRequest] = []
        self.release = threading.Event()  # set by the test's cleanup only
        self._lock = threading.Lock()
        self._busy = 0
        self.idle = threading.Event()

    def _write(self, request: GenerationRequest) -> bool:
        """True when the text was written, False when the request's expiry stopped it (read
        from the expiry itself: a timed wait may wake a hair early)."""
        end = time.monotonic() + self.work_seconds
        try:
            while not self.release.is_set():
                if request.expiry.passed():
                    return False
                left = end - time.monotonic()
                if left <= 0:
                    return True
                expiry_left = request.expiry.remaining()
                self.release.wait(max(min(left, expiry_left or left), 0.001))
            return True
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self.idle.set()

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        with self._lock:
            self._busy += 1
            self.idle.clear()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def work() -> None:
            finished = self._write(request)
            try:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(finished))
            except RuntimeError:  # the caller's loop is gone: nobody waits for this text
                pass

        # a daemon thread, not the loop's executor: asyncio.run would wait for it
        threading.Thread(target=work, daemon=True).start()
        if not await done:
            raise EngineTimeout("stopped writing at the request's expiry")
        return [rule_judgment(shown_responses(request))] * request.n


@pytest.mark.parametrize("how", ["score_batch", "ascore_batch"])
def test_the_batch_deadline_bounds_each_items_requests(how):
    # each item takes 20 s, within its 30 s deadline; the batch has 0.5 s
    judge = _LocalLikeJudge(work_seconds=20)
    rm = GenerativeRewardFn(judge, deadline=Deadline(item=30, batch=0.5))
    prompts, responses = ["Q1", "Q2", "Q3"], [["a"], ["bb"], ["ccc"]]
    started = time.monotonic()
    try:
        if how == "score_batch":
            out = rm.score_batch(prompts, responses)
        else:
            out = asyncio.run(rm.ascore_batch(prompts, responses))
        assert [r.failure_kind for r in out] == [FailureKind.TIMEOUT] * 3
        assert all(r.failed and r.scores == [None] and r.flags == [["timeout"]] for r in out)
        # every request was told the batch's deadline, not only its item's 30 s (generous
        # slack: this reads the expiry each request carried, not how fast anything ran)
        assert len(judge.requests) == 3
        assert all(r.expiry.at is not None for r in judge.requests)
        assert max(r.expiry.at for r in judge.requests) < started + 0.5 + 10
        # so the engine stopped working by itself once the batch gave up on its items
        assert judge.idle.wait(15), "the engine kept judging items its batch had abandoned"
    finally:
        judge.release.set()


# ------------------------------------------------------------- 3. the score-line prefill


#: each template's score-line opener (ScoreFormat.line_start)
_OPENERS = {"grm-plugin": "Final Scores: [[", "deepseek-grm": "\\boxed{"}
_NO_SCORE_LINE = "Specific Criteria: correctness.\nAnalysis: the first is right, the second not."


class _WritesScoresWhenContinued(JudgeEngine):
    """Writes a judgment without a score line; asked to continue it (an assistant prefix that
    ends in a score-line opener), writes the scores and closes the line the opener began."""

    supports_assistant_prefix = True
    score_prefill = True

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        prefix = request.assistant_prefix
        if prefix is None:
            return [_NO_SCORE_LINE] * request.n
        closer = "}" if prefix.endswith("\\boxed{") else "]]"
        return ["8, 3" + closer] * request.n


@pytest.mark.parametrize("how", ["ascore", "score_batch"])
@pytest.mark.parametrize("template", sorted(_OPENERS))
def test_a_judgment_without_a_score_line_is_continued_from_the_templates_opener(template, how):
    opener = _OPENERS[template]
    eng = _WritesScoresWhenContinued()
    rm = GenerativeRewardFn(eng, samples=1, parse_retries=0, shuffle=False, template=template)
    res = _judge(rm, how, "Q", ["right", "wrong"])
    assert not res.failed and res.scores == [8.0, 3.0]
    first, continuation = eng.requests  # no re-sampling: one continuation, then valid
    assert first.assistant_prefix is None
    # the same conversation, with the judge's own turn to continue: its text, then a last line
    # that starts with (here: is) the template's score-line opener
    assert continuation.messages == first.messages
    prefix = continuation.assistant_prefix
    assert prefix is not None and prefix.startswith(_NO_SCORE_LINE)
    assert prefix.splitlines()[-1] == opener
    (sample,) = res.samples
    assert sample.failure is None and sample.scores == [8.0, 3.0]
    assert sample.text == prefix + "8, 3" + ("}" if opener == "\\boxed{" else "]]")


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_mutants"))


@pytest.mark.parametrize("template", sorted(_OPENERS))
def test_the_transformers_engine_prefills_the_score_line_by_default(tiny_model_folder, template):
    # the local engine is the one that continues an assistant turn; its default config must
    # leave the prefill on (the tiny model writes noise, so its first text never parses)
    from grm_plugin.engines.transformers_engine import TransformersEngine

    class Spy(TransformersEngine):
        requests: list[GenerationRequest]

        async def generate(self, request: GenerationRequest) -> list[str]:
            self.requests.append(request)
            return await super().generate(request)

    eng = Spy(TransformersEngineConfig(model=str(tiny_model_folder)))
    eng.requests = []
    try:
        rm = GenerativeRewardFn(
            eng, samples=1, max_new_tokens=16, parse_retries=0, template=template
        )
        res = rm.score("Q", ["a", "b"])
    finally:
        asyncio.run(eng.aclose())
    assert eng.supports_assistant_prefix and eng.score_prefill
    (sample,) = res.samples
    assert [r.assistant_prefix is None for r in eng.requests] == [True, False]
    first_text = sample.text if sample.scores is None else None
    prefix = eng.requests[1].assistant_prefix
    assert prefix.endswith("\n\n" + _OPENERS[template])
    if first_text is not None:  # the continuation did not parse: the first text stands
        assert prefix == first_text.rstrip() + "\n\n" + _OPENERS[template]
    assert eng.requests[1].messages == eng.requests[0].messages


def test_the_rule_judge_needs_no_prefill():
    # control: a judgment with a score line is never continued
    eng = RuleJudgeEngine()
    eng.supports_assistant_prefix = True
    eng.score_prefill = True
    res = GenerativeRewardFn(eng, samples=1).score("Q", ["a", "bb"])
    assert res.scores == [2.0, 3.0]
    assert [r.assistant_prefix for r in eng.requests] == [None]
