"""The judgment cache serves only judgments of the same judge setup (issue 21, items 3 and 4).

- The fingerprint covers what changes a judgment: the template's text (not its path), the meta
  RM's weights (not its class name), sampling and the engine's model.
- A degraded judgment (fewer valid samples than asked for) is flagged and not cached.
- The SQLite store carries a schema version; a store of another version is refused.
- A store that cannot be opened (garbage bytes, a directory) fails when the reward is built,
  naming the file, never as an engine failure at every judgment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from grm_plugin import GenerativeRewardFn, JudgeConfig
from grm_plugin.cache import SCHEMA_VERSION, CacheConfig, CacheStoreError, JudgmentCache
from grm_plugin.config import OpenAIEngineConfig
from grm_plugin.engines.base import GenerationRequest
from grm_plugin.results import FailureKind, ResponseFlag
from grm_plugin.testing import RuleJudgeEngine, rule_judgment, shown_responses

PRESET = resources.files("grm_plugin.templates").joinpath("grm-plugin.jinja")


def reward(engine, meta_rm=None, **settings: object) -> GenerativeRewardFn:
    config = JudgeConfig.model_validate(settings)
    return GenerativeRewardFn.from_config(config, engine=engine, meta_rm=meta_rm)


class Identified:
    """A meta RM that names the weights it scores with (``identity()``)."""

    def __init__(self, weights: str) -> None:
        self.weights = weights

    def identity(self) -> str:
        return self.weights

    def score_judgments(self, prompt, shown_responses, judgments):
        return [1.0] * len(judgments)


class Anonymous:
    """A meta RM without ``identity()``: nothing tells two instances' weights apart."""

    def score_judgments(self, prompt, shown_responses, judgments):
        return [1.0] * len(judgments)


# ----------------------------------------------------------------------------- fingerprint


def test_another_meta_rm_of_the_same_class_is_another_judgment(tmp_path) -> None:
    store = {"max_items": 10, "path": str(tmp_path / "j.sqlite")}

    def judged_by(meta_rm: Identified) -> tuple[RuleJudgeEngine, list[list[str]]]:
        engine = RuleJudgeEngine()
        rm = reward(engine, meta_rm, sampling={"samples": 2}, cache=store)
        return engine, rm.score("Q?", ["a", "bb"]).flags

    judged_by(Identified("v1"))
    engine, _ = judged_by(Identified("v2"))
    assert len(engine.requests) > 0  # judged again: v2's weights never saw this item
    engine, flags = judged_by(Identified("v1"))
    assert engine.requests == [] and all(ResponseFlag.CACHED in f for f in flags)


def test_a_meta_rm_without_identity_is_reused_only_by_its_own_run(tmp_path) -> None:
    store = {"max_items": 10, "path": str(tmp_path / "j.sqlite")}
    rm = reward(RuleJudgeEngine(), Anonymous(), sampling={"samples": 2}, cache=store)
    rm.score("Q?", ["a", "bb"])
    assert rm.score("Q?", ["a", "bb"]).flags == [[ResponseFlag.CACHED]] * 2  # same object
    engine = RuleJudgeEngine()
    reward(engine, Anonymous(), sampling={"samples": 2}, cache=store).score("Q?", ["a", "bb"])
    assert len(engine.requests) > 0  # another instance may hold other weights


def test_an_edited_template_file_is_another_judgment(tmp_path) -> None:
    template = tmp_path / "judge.jinja"
    template.write_text(PRESET.read_text(encoding="utf-8"), encoding="utf-8")
    store = {"max_items": 10, "path": str(tmp_path / "j.sqlite")}
    rm = reward(RuleJudgeEngine(), template=str(template), cache=store)
    rm.score("Q?", ["a", "bb"])

    # the same file, edited: a new run must not get the old prompt's judgments
    before = template.stat()
    template.write_text(
        PRESET.read_text(encoding="utf-8").replace("careful, impartial", "strict"),
        encoding="utf-8",
    )
    os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    engine = RuleJudgeEngine()
    reward(engine, template=str(template), cache=store).score("Q?", ["a", "bb"])
    assert len(engine.requests) == 1
    assert "You are a strict judge" in engine.requests[0].messages[0]["content"]

    # nor the run that is still going (its renders already use the edited file)
    rm.engine = counting = RuleJudgeEngine()
    rm.score("Q?", ["a", "bb"])
    assert len(counting.requests) == 0  # the edited file's judgment, stored by the new run
    template.write_text(PRESET.read_text(encoding="utf-8"), encoding="utf-8")
    os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns + 2 * 10**9))
    rm.score("Q?", ["a", "bb"])
    assert len(counting.requests) == 0  # the original text again: its judgment is back
    template.write_text(PRESET.read_text(encoding="utf-8") + "\n{# v3 #}", encoding="utf-8")
    os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns + 3 * 10**9))
    rm.score("Q?", ["a", "bb"])
    assert len(counting.requests) == 1


def test_a_template_file_with_the_same_text_elsewhere_is_the_same_judgment(tmp_path) -> None:
    store = {"max_items": 10, "path": str(tmp_path / "j.sqlite")}
    a, b = tmp_path / "a.jinja", tmp_path / "b.jinja"
    for f in (a, b):
        f.write_text(PRESET.read_text(encoding="utf-8"), encoding="utf-8")
    reward(RuleJudgeEngine(), template=str(a), cache=store).score("Q?", ["a", "bb"])
    engine = RuleJudgeEngine()
    reward(engine, template=str(b), cache=store).score("Q?", ["a", "bb"])
    assert engine.requests == []


def test_sampling_and_engine_model_are_part_of_the_fingerprint() -> None:
    # (these were covered before; a guard against the rewrite dropping them)
    def fp(model: str = "judge-a", **sampling: object) -> str:
        engine = RuleJudgeEngine()
        engine.config = OpenAIEngineConfig(base_url="http://127.0.0.1:1/v1", model=model)
        rm = reward(engine, sampling=sampling, cache={"max_items": 1})
        return rm._judgment_fingerprint()

    assert fp() == fp()
    assert fp() != fp(model="judge-b")
    assert fp() != fp(temperature=0.9)
    assert fp() != fp(samples=4)


# ----------------------------------------------------------------------------- degraded


class HalfValidEngine(RuleJudgeEngine):
    """Every second text it writes has no score line."""

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    async def generate(self, request: GenerationRequest) -> list[str]:
        self.requests.append(request)
        out = []
        for _ in range(request.n):
            good = self.texts % 2 == 0
            self.texts += 1
            out.append(rule_judgment(shown_responses(request)) if good else "I cannot decide.")
        return out


def test_a_degraded_judgment_is_flagged_and_not_cached() -> None:
    engine = HalfValidEngine()
    settings = {"samples": 4, "parse_retries": 0}
    rm = reward(engine, sampling=settings, cache={"max_items": 10})
    first = rm.score("Q?", ["a", "bb"])
    assert (first.failed, first.num_valid) == (False, 2)
    assert first.flags == [[ResponseFlag.DEGRADED]] * 2
    again = rm.score("Q?", ["a", "bb"])
    assert engine.texts == 8  # judged again, not served from the cache
    assert not any(ResponseFlag.CACHED in f for f in again.flags)
    assert rm._judgment_cache.stats()["stored"] == 0


def test_a_complete_judgment_is_not_flagged_degraded() -> None:
    rm = reward(RuleJudgeEngine(), sampling={"samples": 4}, cache={"max_items": 10})
    assert rm.score("Q?", ["a", "bb"]).flags == [[], []]
    assert rm._judgment_cache.stats()["stored"] == 1


def test_flags_are_one_enum() -> None:
    assert ResponseFlag.DEGRADED.value == "degraded"
    assert {f.value for f in ResponseFlag} >= {"cached", "duplicate", "empty_response"}


# ----------------------------------------------------------------------------- schema version


def test_the_store_keeps_its_schema_version(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    reward(RuleJudgeEngine(), cache={"max_items": 4, "path": str(path)}).score("Q?", ["a"])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    engine = RuleJudgeEngine()  # reopening a store of this version reuses it
    reward(engine, cache={"max_items": 4, "path": str(path)}).score("Q?", ["a"])
    assert engine.requests == []


@pytest.mark.parametrize("version", [0, 99])
def test_a_store_of_another_schema_version_is_refused(tmp_path, version: int) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # what grm-plugin before the schema version wrote
        db.execute("CREATE TABLE judgments (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO judgments VALUES ('k', '[]')")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    with pytest.raises(CacheStoreError, match="schema version") as e:
        reward(RuleJudgeEngine(), cache={"max_items": 4, "path": str(path)})
    assert str(path) in str(e.value) and str(version) in str(e.value)
    with sqlite3.connect(path) as db:  # refused, not wiped
        assert db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 1
    db.close()


# ----------------------------------------------------------------------------- unopenable store


def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(bytes(range(256)) * 16)
    return path


def directory(tmp_path: Path) -> Path:
    path = tmp_path / "a-directory.sqlite"
    path.mkdir()
    return path


@pytest.mark.parametrize("make", [garbage, directory])
def test_an_unusable_store_fails_when_the_reward_is_built_naming_the_file(tmp_path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(CacheStoreError) as e:
        reward(RuleJudgeEngine(), cache={"max_items": 4, "path": str(path)})
    assert str(path) in str(e.value)
    assert "engine" not in str(e.value).lower()
    with pytest.raises(CacheStoreError, match=str(path)):
        JudgmentCache(CacheConfig(max_items=4, path=str(path)), fingerprint="f")


def test_a_store_that_breaks_after_the_start_is_a_miss_not_an_engine_failure(
    tmp_path, caplog
) -> None:
    path = tmp_path / "j.sqlite"
    rm = reward(RuleJudgeEngine(), cache={"max_items": 1, "path": str(path)})
    rm.score("Q?", ["a"])
    with sqlite3.connect(path) as db:  # another process damages the store
        db.execute("DROP TABLE judgments")
    db.close()
    with caplog.at_level(logging.WARNING, logger="grm_plugin.cache"):
        results = rm.score_batch(["Q2?", "Q3?", "Q?"], [["b"], ["c"], ["a"]])
    assert [r.failed for r in results] == [False, False, False]
    assert all(r.failure_kind is not FailureKind.ENGINE for r in results)
    warnings = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 1  # one loud line, not one per lookup


def test_real_meta_rm_identity_is_its_weights_not_its_folder(tmp_path) -> None:
    pytest.importorskip("transformers")
    from grm_plugin.meta_rm.model import MetaRM

    from .meta_rm_fakes import build_tiny_bert

    a = build_tiny_bert(tmp_path / "a")
    assert MetaRM(a, device="cpu").identity() == MetaRM(a, device="cpu").identity()
    moved = shutil.copytree(a, tmp_path / "moved")
    assert MetaRM(moved, device="cpu").identity() == MetaRM(a, device="cpu").identity()

    # other weights of the same size and the same modification time: still another identity
    other = shutil.copytree(a, tmp_path / "other")
    weights = other / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2  # past the header (a few hundred bytes): weight values
    data[middle : middle + 4] = bytes(b ^ 0x40 for b in data[middle : middle + 4])
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert MetaRM(other, device="cpu").identity() != MetaRM(a, device="cpu").identity()
    # the input settings change the scores too
    assert MetaRM(a, device="cpu", max_length=16).identity() != MetaRM(a, device="cpu").identity()


def test_readme_cache_paragraph_names_what_exists() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("A judgment is\n  reused only by the same judge") :]
    paragraph = paragraph[: paragraph.index("\n- ")]
    assert f"flagged `{ResponseFlag.DEGRADED.value}`" in paragraph
    assert "`engine.model`" in paragraph and "model" in OpenAIEngineConfig.model_fields
    assert "`identity()`" in paragraph and callable(Identified("x").identity)
    assert "schema version" in paragraph and SCHEMA_VERSION >= 1
