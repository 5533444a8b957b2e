"""SPCT end to end on a tiny model built from a config: collect with a scripted judge, SFT and
RL for 2 steps each (trl + peft for real), and the saved folders load as judges."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from grm_plugin import GenerativeRewardFn  # noqa: E402
from grm_plugin.cli.main import main  # noqa: E402
from grm_plugin.spct import LoraSettings, SFTSettings  # noqa: E402
from grm_plugin.spct.collect import read_rft_records  # noqa: E402
from grm_plugin.spct.sft import train_sft  # noqa: E402

from .spct_fakes import SCRIPTED_ITEMS, collect_scripted_rft  # noqa: E402
from .tiny_model import build_tiny_model  # noqa: E402

ITEMS = SCRIPTED_ITEMS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rft") / "rft.jsonl"
    counts = collect_scripted_rft(out)
    assert (counts.kept, counts.hinted) == (3, 2)
    return out


def _loads_as_judge(folder: Path) -> None:
    rm = GenerativeRewardFn(str(folder), max_new_tokens=16, parse_retries=0)
    result = rm.score("Say hi", ["hi", "go away"])
    # random weights never write a valid judgment, but the folder loaded and generated
    assert result.samples and result.samples[0].text is not None


def test_sft_with_lora_saves_a_loadable_judge(tiny: Path, records: Path, tmp_path: Path) -> None:
    settings = SFTSettings(base=str(tiny), lora=LoraSettings(r=4, alpha=8), max_steps=2)
    report = train_sft(read_rft_records(records), tmp_path / "sft", settings, progress=False)
    assert report["steps"] == 2 and report["examples"] == 3 and report["hinted_examples"] == 2
    losses = [h["loss"] for h in report["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    saved = json.loads((tmp_path / "sft" / "spct_train.json").read_text())
    assert saved["steps"] == 2
    # LoRA: the adapter alone by default, which loads onto its base like a model
    assert (tmp_path / "sft" / "adapter_config.json").exists()
    assert not (tmp_path / "sft" / "config.json").exists()
    _loads_as_judge(tmp_path / "sft")
    merged = tmp_path / "merged"
    train_sft(
        read_rft_records(records),
        merged,
        settings.model_copy(update={"save": "merged"}),
        progress=False,
    )
    assert not (merged / "adapter_config.json").exists()  # merged: a plain folder
    _loads_as_judge(merged)


def test_sft_drop_hinted_and_full_fine_tuning(tiny: Path, records: Path, tmp_path: Path) -> None:
    settings = SFTSettings(base=str(tiny), max_steps=2, hinted="drop")
    report = train_sft(read_rft_records(records), tmp_path / "sft", settings, progress=False)
    assert report["examples"] == 1 and report["hinted_examples"] == 0


def test_sft_leaves_out_judgments_shorter_than_min_judgment_chars(
    tiny: Path, records: Path, tmp_path: Path
) -> None:
    recs = read_rft_records(records)
    # one record with a critique before its score line, the others bare
    first = recs[0].messages[-1]["content"]
    critique = "Analysis: response 1 answers the question; response 2 does not.\n"
    recs[0] = recs[0].model_copy(
        update={
            "messages": [*recs[0].messages[:-1], {"role": "assistant", "content": critique + first}]
        }
    )
    lengths = sorted(len(r.messages[-1]["content"]) for r in recs)
    bound = len(critique + first)
    assert lengths[0] < bound <= lengths[-1]
    settings = SFTSettings(base=str(tiny), max_steps=1, min_judgment_chars=bound)
    report = train_sft(recs, tmp_path / "sft", settings, progress=False)
    short = sum(n < bound for n in lengths)
    assert short >= 1 and report["short_dropped"] == short
    assert report["examples"] == len(recs) - short
    with pytest.raises(ValueError, match="shorter than min_judgment_chars"):
        train_sft(
            recs, tmp_path / "none", settings.model_copy(update={"min_judgment_chars": 10**6})
        )


def test_sft_completion_only_loss_masks_the_prompt(tiny: Path, records: Path) -> None:
    """The loss covers the judgment tokens only: trl's collator masks every prompt token."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from grm_plugin.spct.sft import sft_examples

    recs = read_rft_records(records)
    tok = AutoTokenizer.from_pretrained(tiny)
    args = SFTConfig(
        output_dir="/tmp/unused",
        completion_only_loss=True,
        max_length=2048,
        use_cpu=True,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=str(tiny),
        args=args,
        train_dataset=Dataset.from_list(sft_examples(recs)),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    assert recs[0].messages[-1]["content"].split()[0] in trained
    assert "Evaluate the" not in trained and "<<<RESPONSE" not in trained


def test_cli_collect_sft_rl_eval_as_in_the_readme(
    tiny: Path,
    records: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(it.model_dump_json(exclude_none=True) + "\n" for it in ITEMS))
    rft = tmp_path / "rft.jsonl"
    argv = ["spct", "collect", str(data), "--out", str(rft), "--samples", "3", "--hint-retry"]
    # a real model (random weights): every judgment is unparsable, so all items get the hint
    assert main([*argv, "--model", str(tiny), "--max-new-tokens", "16", "--no-progress"]) == 0
    counts = json.loads((tmp_path / "rft.counts.json").read_text())
    assert (counts["samples"], counts["rejected_unparsable"], counts["kept"]) == (12, 12, 0)
    assert counts["hint_retried"] == 2
    assert "rejected unparsable 12" in capsys.readouterr().out

    sft = tmp_path / "judge-sft"
    argv = ["spct", "sft", str(records), "--out", str(sft), "--lora", "--base", str(tiny)]
    assert main([*argv, "--max-steps", "2", "--no-progress"]) == 0
    assert "3 examples, 2 steps" in capsys.readouterr().out

    rl = tmp_path / "judge-rl"
    argv = ["spct", "rl", str(data), "--base", str(sft), "--out", str(rl), "--steps", "2"]
    argv += ["--group-size", "2", "--max-completion-length", "16", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="grm_plugin.spct.rl"):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("per step: "))
    per_step = json.loads(line.removeprefix("per step: "))
    assert [m["step"] for m in per_step] == [1, 2]
    # random weights: nothing parses, so every judgment is -1: every group has zero variance,
    # and each such step is logged as one that cannot learn (the SmolLM2 run of issue 17)
    assert all(m["spct/parse_rate"] == 0.0 and m["spct/accuracy"] == 0.0 for m in per_step)
    assert all(m["spct/zero_variance_groups"] == 1.0 for m in per_step)
    warned = [r.getMessage() for r in caplog.records if "cannot learn" in r.getMessage()]
    assert len(warned) == 2 and "step 1" in warned[0]
    assert "2 of 2 steps had equal rewards in every group" in printed
    saved = json.loads((rl / "spct_train.json").read_text())
    assert saved["stage"] == "rl" and saved["steps"] == 2 and saved["settings"]["beta"] == 0.08
    assert saved["steps_without_signal"] == 2
    # the loss and temperature trl actually ran with: stated choices, GRPO's loss by default
    assert saved["trl_args"] == {
        "loss_type": "grpo",
        "scale_rewards": "group",
        "temperature": 1.0,
        "beta": 0.08,
    }

    report_dir = tmp_path / "eval"
    argv = ["eval", str(data), "--model", str(rl), "--samples", "1", "--max-new-tokens", "16"]
    assert main([*argv, "--out", str(report_dir), "--no-progress"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n_items"] == 2 and report["levels"][0]["parse_failures"] == 2


def test_cli_reads_the_example_config(tiny: Path, tmp_path: Path) -> None:
    """examples/spct.yaml as shipped: collect takes N, the hint flag and the sampling from it."""
    example = Path(__file__).resolve().parents[1] / "examples" / "spct.yaml"
    data = tmp_path / "train.jsonl"
    data.write_text(ITEMS[0].model_dump_json(exclude_none=True) + "\n")
    out = tmp_path / "rft.jsonl"
    argv = ["spct", "collect", str(data), "--out", str(out), "--config", str(example)]
    assert main([*argv, "--model", str(tiny), "--max-new-tokens", "16", "--no-progress"]) == 0
    counts = json.loads((tmp_path / "rft.counts.json").read_text())
    assert counts["samples"] == 6 and counts["hint_retried"] == 1  # samples: 3, hint_retry: true


def test_rl_loss_and_temperature_are_stated_choices_flags_win(
    tmp_path: Path, records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPO's loss by default (not trl's dapo); the YAML sets loss, temperature and checkpoints,
    flags win (through the real CLI, up to the training call); typos are refused."""
    import grm_plugin.spct.rl as rl_module
    import grm_plugin.spct.sft as sft_module
    from grm_plugin.spct import RLSettings, SPCTConfig

    assert (RLSettings().loss_type, RLSettings().temperature) == ("grpo", 1.0)
    seen: dict = {}

    def fake_rl(items, out, settings, **kwargs):  # noqa: ANN001, ANN003
        seen["rl"] = settings
        return {"log_history": [], "steps": 0, "steps_without_signal": 0, "train_seconds": 0}

    def fake_sft(records, out, settings, **kwargs):  # noqa: ANN001, ANN003
        seen["sft"] = settings
        return {"examples": 0, "steps": 0, "train_seconds": 0, "train_loss": 0.0}

    monkeypatch.setattr(rl_module, "train_rl", fake_rl)
    monkeypatch.setattr(sft_module, "train_sft", fake_sft)
    config = tmp_path / "spct.yaml"
    config.write_text(
        "rl:\n  loss_type: dr_grpo\n  temperature: 0.7\n  scale_rewards: none\n  save_steps: 3\n"
    )
    data = tmp_path / "train.jsonl"
    data.write_text(ITEMS[0].model_dump_json() + "\n")
    argv = ["spct", "rl", str(data), "--out", "o", "--config", str(config)]
    assert main([*argv, "--loss-type", "dapo"]) == 0
    rl = seen["rl"]
    assert (rl.loss_type, rl.temperature, rl.scale_rewards, rl.save_steps) == (
        "dapo",
        0.7,
        "none",
        3,
    )
    assert main([*argv, "--temperature", "0.9", "--save-steps", "5"]) == 0
    assert (seen["rl"].loss_type, seen["rl"].temperature, seen["rl"].save_steps) == (
        "dr_grpo",
        0.9,
        5,
    )
    assert seen["rl"].gradient_checkpointing is True
    assert main([*argv, "--no-gradient-checkpointing"]) == 0
    assert seen["rl"].gradient_checkpointing is False
    assert main(["spct", "sft", str(records), "--out", "o", "--save-steps", "7"]) == 0
    assert seen["sft"].save_steps == 7
    with pytest.raises(ValueError):
        SPCTConfig.model_validate({"rl": {"loss_type": "ppo"}})


def test_lora_is_the_default_and_full_weights_a_flag_or_null(
    tmp_path: Path, records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoRA by default with its own learning rate, gradient checkpointing off for sft (on for
    rl, whose steps hold a group's logits); --full-weights or
    `lora: null` trains every weight at the full-weight rate; --lora and --full-weights clash."""
    import grm_plugin.spct.sft as sft_module
    from grm_plugin.spct import RLSettings, SFTSettings

    seen: list = []

    def fake_sft(records, out, settings, **kwargs):  # noqa: ANN001, ANN003
        seen.append(settings)
        return {"examples": 0, "steps": 0, "train_seconds": 0, "train_loss": 0.0}

    monkeypatch.setattr(sft_module, "train_sft", fake_sft)
    argv = ["spct", "sft", str(records), "--out", "o"]
    assert main(argv) == 0
    assert seen[-1].lora is not None and seen[-1].resolved_learning_rate() == 1e-4
    assert seen[-1].gradient_checkpointing is False
    assert main([*argv, "--full-weights", "--gradient-checkpointing"]) == 0
    assert seen[-1].lora is None and seen[-1].resolved_learning_rate() == 1e-5
    assert seen[-1].gradient_checkpointing is True
    config = tmp_path / "spct.yaml"
    config.write_text("sft:\n  lora: null\n")
    assert main([*argv, "--config", str(config)]) == 0
    assert seen[-1].lora is None
    assert main([*argv, "--config", str(config), "--lora", "--lr", "3e-3"]) == 0
    assert seen[-1].lora is not None and seen[-1].resolved_learning_rate() == 3e-3
    with pytest.raises(SystemExit):
        main([*argv, "--lora", "--full-weights"])
    assert RLSettings().gradient_checkpointing is True
    assert (
        RLSettings().resolved_learning_rate(),
        RLSettings(lora=None).resolved_learning_rate(),
    ) == (
        1e-5,
        1e-6,
    )
    # gradient checkpointing is one of ours: `trl: {gradient_checkpointing: ...}` is refused
    from trl import SFTConfig

    from grm_plugin.spct._train import trl_config

    with pytest.raises(ValueError, match="set by other settings"):
        trl_config(SFTConfig, {"gradient_checkpointing": False}, {"gradient_checkpointing": True})
    assert SFTSettings(trl={"warmup_steps": 10}).trl == {"warmup_steps": 10}


class _Interrupt(Exception):
    pass


def _stop_at(step: int):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == step:
                raise _Interrupt(f"killed at step {step}")

    return StopAt()


def _count_steps():
    from transformers import TrainerCallback

    class Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            Count.steps += 1

    return Count()


def test_sft_resumes_from_its_last_checkpoint(tiny: Path, records: Path, tmp_path: Path) -> None:
    from grm_plugin.spct._train import checkpoints_path

    out = tmp_path / "sft"
    settings = SFTSettings(base=str(tiny), lora=LoraSettings(r=4, alpha=8), max_steps=3)
    settings = settings.model_copy(update={"save_steps": 1})
    recs = read_rft_records(records)
    with pytest.raises(_Interrupt):
        train_sft(recs, out, settings, progress=False, callbacks=[_stop_at(2)])
    assert (checkpoints_path(out) / "checkpoint-1").is_dir() and not out.exists()
    counter = _count_steps()
    report = train_sft(recs, out, settings, progress=False, callbacks=[counter])
    assert report["resumed_from"].endswith("checkpoint-1") and report["steps"] == 3
    assert counter.steps == 2  # steps 2 and 3 only: step 1 came from the checkpoint
    losses = [h["loss"] for h in report["log_history"] if "loss" in h]
    assert [h["step"] for h in report["log_history"] if "loss" in h] == [1, 2, 3]
    # the loss reported is over all 3 steps, also the one trained before the interruption
    assert report["train_loss"] == pytest.approx(sum(losses) / 3) and report["train_loss"] > 0
    assert not checkpoints_path(out).exists()  # removed once the judge is saved
    _loads_as_judge(out)


def test_a_resumed_run_checkpoints_at_its_own_interval(
    tiny: Path, records: Path, tmp_path: Path
) -> None:
    # transformers keeps the interval of the checkpoint it resumes from; ours is the settings'
    from transformers import TrainerCallback

    class Saves(TrainerCallback):
        steps: list[int] = []

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            Saves.steps.append(state.global_step)

    out = tmp_path / "sft"
    settings = SFTSettings(base=str(tiny), lora=LoraSettings(r=4, alpha=8), max_steps=4)
    recs = read_rft_records(records)
    with pytest.raises(_Interrupt):
        train_sft(
            recs,
            out,
            settings.model_copy(update={"save_steps": 2}),
            progress=False,
            callbacks=[Saves(), _stop_at(3)],
        )
    assert Saves.steps == [2]
    Saves.steps = []
    report = train_sft(
        recs,
        out,
        settings.model_copy(update={"save_steps": 1}),
        progress=False,
        callbacks=[Saves()],
    )
    assert report["resumed_from"].endswith("checkpoint-2")
    assert Saves.steps == [3, 4]  # the old interval of 2 saved at step 4 only


def test_rl_resumes_from_its_last_checkpoint(tiny: Path, tmp_path: Path) -> None:
    from grm_plugin.spct import RLSettings
    from grm_plugin.spct._train import checkpoints_path
    from grm_plugin.spct.rl import train_rl

    out = tmp_path / "rl"
    settings = RLSettings(
        base=str(tiny), steps=2, group_size=2, max_completion_length=16, save_steps=1
    )
    with pytest.raises(_Interrupt):
        train_rl(ITEMS, out, settings, progress=False, callbacks=[_stop_at(2)])
    assert (checkpoints_path(out) / "checkpoint-1").is_dir()
    counter = _count_steps()
    report = train_rl(ITEMS, out, settings, progress=False, callbacks=[counter])
    assert report["resumed_from"].endswith("checkpoint-1") and report["steps"] == 2
    assert counter.steps == 1
    # the zero-variance share of the step run before the interruption survived the resume
    shares = [h["spct/zero_variance_groups"] for h in report["log_history"] if "loss" in h]
    assert shares == [1.0, 1.0] and report["steps_without_signal"] == 2
