"""SPCT on a real pretrained model (SmolLM2-135M-Instruct from PyPI): collect with it as the
judge, one SFT step and one RL step on it, and the saved folders judge again. Slow: real_model."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from grm_plugin import GenerativeRewardFn  # noqa: E402
from grm_plugin.spct import LoraSettings, RLSettings, SFTSettings, SPCTItem, collect  # noqa: E402
from grm_plugin.spct.collect import read_rft_records  # noqa: E402
from grm_plugin.spct.rl import train_rl  # noqa: E402
from grm_plugin.spct.sft import train_sft  # noqa: E402

from .openai_fakes import smollm2_folder  # noqa: E402
from .spct_fakes import ScriptedJudge  # noqa: E402

pytestmark = pytest.mark.real_model

ITEMS = [
    SPCTItem(id="a", prompt="What is 2+2?", responses=["4", "5"], best=0),
    SPCTItem(id="b", prompt="Name a prime.", responses=["9", "7"], best=1),
]


def test_spct_on_smollm2(tmp_path: Path) -> None:
    base = smollm2_folder()
    rm = GenerativeRewardFn(str(base), samples=2, max_new_tokens=64, parse_retries=0, seed=0)
    counts = collect(rm, ITEMS, tmp_path / "real.jsonl", hint_retry=True, progress=False)
    # every judgment is accounted for, whatever this small model writes
    assert counts.items_done + counts.engine_failed_items == 2
    parts = counts.kept + counts.rejected_wrong + counts.rejected_unparsable
    assert parts + 2 * counts.dropped_too_easy == counts.samples
    # SFT needs correct judgments, which a 135M judge rarely writes: use scripted ones (built
    # through the same prompt) so the step runs on the real model's weights
    script = ScriptedJudge(
        {
            "What is 2+2?": ("4", ["right", "wrong"], []),
            "Name a prime.": ("7", ["right", "wrong"], []),
        }
    )
    scripted = GenerativeRewardFn(script, samples=2, parse_retries=0, seed=0)
    collect(scripted, ITEMS, tmp_path / "rft.jsonl", progress=False)
    sft = tmp_path / "sft"
    settings = SFTSettings(base=str(base), lora=LoraSettings(r=4, alpha=8), max_steps=1)
    report = train_sft(read_rft_records(tmp_path / "rft.jsonl"), sft, settings, progress=False)
    assert report["steps"] == 1 and report["train_loss"] > 0
    rl = tmp_path / "rl"
    rl_settings = RLSettings(base=str(sft), steps=1, group_size=2, max_completion_length=32)
    assert train_rl(ITEMS, rl, rl_settings, progress=False)["steps"] == 1
    judged = GenerativeRewardFn(str(rl), max_new_tokens=64).score("What is 2+2?", ["4", "5"])
    assert judged.samples[0].text
