"""The trained LoRA adapter as a published file (issue 17): saved unmerged in bf16 safetensors
with a manifest, loaded onto its base by the engine, stacked when RL starts from the RFT adapter;
and the rest of the paper's RFT recipe: general instruction data mixed in, the hinted round's N."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from grm_plugin import GenerativeRewardFn, TransformersEngineConfig  # noqa: E402
from grm_plugin.cli.main import main  # noqa: E402
from grm_plugin.spct import LoraSettings, RLSettings, SFTSettings, collect  # noqa: E402
from grm_plugin.spct.collect import read_rft_records  # noqa: E402
from grm_plugin.spct.sft import general_examples, train_sft  # noqa: E402

from .spct_fakes import SCRIPTED_ITEMS, ScriptedJudge, collect_scripted_rft  # noqa: E402
from .tiny_model import build_tiny_model  # noqa: E402

ITEMS = SCRIPTED_ITEMS
PROBE = "Evaluate the responses: the quick brown fox 1 2 3"
# a large step so that the adapter visibly moves the logits (2 steps at 1e-5 barely would)
FAST = dict(lora=LoraSettings(r=4, alpha=8), max_steps=2, learning_rate=5e-2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rft") / "rft.jsonl"
    collect_scripted_rft(out)
    return out


@pytest.fixture(scope="module")
def both(tiny: Path, records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SFT run saved both ways: the merged folder, its adapter in ``adapter/``."""
    out = tmp_path_factory.mktemp("both") / "sft"
    settings = SFTSettings(base=str(tiny), save="both", **FAST)
    train_sft(read_rft_records(records), out, settings, progress=False)
    return out


def _logits(model, tok):  # noqa: ANN001, ANN202
    import torch

    with torch.no_grad():
        return model(**tok(PROBE, return_tensors="pt")).logits


def _engine_logits(config: TransformersEngineConfig):  # noqa: ANN202
    from grm_plugin.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(config)
    return _logits(engine.model, engine.tokenizer)


def _folder_logits(folder: Path):  # noqa: ANN202
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    return _logits(model, AutoTokenizer.from_pretrained(folder))


def test_lora_sft_saves_the_adapter_unmerged_in_bf16_with_its_manifest(
    tiny: Path, records: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    out = tmp_path / "sft"
    report = train_sft(read_rft_records(records), out, SFTSettings(base=str(tiny), **FAST))
    # LoRA saves the adapter alone by default: peft files, no whole model
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    weights = out / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118
        assert any(".lora_A." in k for k in f.keys())  # noqa: SIM118
    assert dtypes == {"torch.bfloat16"}
    manifest = json.loads((out / "spct_adapter.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["size_bytes"] == weights.stat().st_size
    assert manifest["base"] == str(tiny.resolve())
    assert manifest["base_shape"]["hidden_size"] == 64
    assert report["adapter"] == manifest
    saved = json.loads((out / "spct_train.json").read_text())
    assert saved["adapter"]["sha256"] == manifest["sha256"]
    # a bare GenerativeRewardFn(folder) finds the base through the manifest and judges
    rm = GenerativeRewardFn(str(out), max_new_tokens=16, parse_retries=0)
    assert rm.score("Say hi", ["hi", "go away"]).samples[0].text is not None


def test_full_fine_tuning_cannot_save_an_adapter() -> None:
    with pytest.raises(ValueError, match="needs lora"):
        SFTSettings(lora=None, save="adapter")
    assert SFTSettings().save is None and RLSettings(lora=LoraSettings()).save is None


def test_base_plus_adapter_gives_the_merged_models_logits(tiny: Path, both: Path) -> None:
    import torch

    merged = _folder_logits(both)
    base = _folder_logits(tiny)
    cfg = TransformersEngineConfig(model=str(tiny), adapter=str(both / "adapter"), device="cpu")
    loaded = _engine_logits(cfg)
    # the adapter moved the model, and loading it reproduces the merged model up to its bf16
    # rounding
    assert (merged - base).abs().max() > 0.05
    torch.testing.assert_close(loaded, merged, atol=5e-3, rtol=0)
    bare = _engine_logits(TransformersEngineConfig(model=str(both / "adapter"), device="cpu"))
    torch.testing.assert_close(bare, loaded, atol=0, rtol=0)


def _other_base(tiny: Path, folder: Path) -> Path:
    """A model of another shape (hidden 32) with the tiny model's tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(folder)
    return folder


def test_an_adapter_on_another_base_is_a_clear_error(
    tiny: Path, both: Path, tmp_path: Path
) -> None:
    other = _other_base(tiny, tmp_path / "other")
    adapter = both / "adapter"
    cfg = TransformersEngineConfig(model=str(other), adapter=str(adapter), device="cpu")
    with pytest.raises(ValueError, match="trained on another base.*hidden_size 64 .* vs 32"):
        _engine_logits(cfg)
    # without a manifest, peft's size mismatch is named as such
    bare = tmp_path / "bare"
    shutil.copytree(adapter, bare)
    (bare / "spct_adapter.json").unlink()
    cfg = TransformersEngineConfig(model=str(other), adapter=str(bare), device="cpu")
    with pytest.raises(ValueError, match="does not fit the base"):
        _engine_logits(cfg)


def test_an_adapter_whose_weights_are_not_its_manifests_is_refused(
    tiny: Path, both: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(both / "adapter", copy)
    weights = copy / "adapter_model.safetensors"
    # a copy cut short: the first half of the file
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = TransformersEngineConfig(model=str(tiny), adapter=str(copy), device="cpu")
    with pytest.raises(ValueError, match="do not match its spct_adapter.json.*copy the adapter"):
        _engine_logits(cfg)
    weights.unlink()
    with pytest.raises(ValueError, match="sha256 missing"):
        _engine_logits(cfg)


def test_loading_an_adapter_without_peft_says_to_install_it(
    tiny: Path, both: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grm_plugin.engines.transformers_engine import apply_adapter

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModuleNotFoundError, match="pip install peft"):
        apply_adapter(object(), both / "adapter")


def test_a_base_with_an_adapter_merged_in_stays_trainable(both: Path) -> None:
    """peft loads adapters frozen for inference; full fine-tuning from base + adapter (rl
    --base judge-sft --full-weights) must still train every weight."""
    from grm_plugin.spct._train import load_base

    model, _ = load_base(str(both / "adapter"), "cpu")
    assert all(p.requires_grad for p in model.parameters())


def test_rl_from_the_rft_adapter_saves_one_adapter_for_the_original_base(
    tiny: Path, both: Path, tmp_path: Path
) -> None:
    """RL trains a new LoRA on base + RFT adapter (merged in memory); the saved adapter stacks
    both, so the original base plus it is the RL judge."""
    import torch

    from grm_plugin.spct.rl import train_rl

    out = tmp_path / "rl"
    settings = RLSettings(
        base=str(both / "adapter"),
        steps=1,
        group_size=2,
        max_completion_length=16,
        learning_rate=5e-2,
        lora=LoraSettings(r=2, alpha=4),
        save="both",
    )
    report = train_rl(ITEMS, out, settings, progress=False)
    manifest = report["adapter"]
    assert manifest["base"] == str(tiny.resolve())  # the original base, not the RFT adapter
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 + 2
    cfg = TransformersEngineConfig(model=str(tiny), adapter=str(out / "adapter"), device="cpu")
    torch.testing.assert_close(_engine_logits(cfg), _folder_logits(out), atol=5e-3, rtol=0)


def test_eval_and_score_take_an_adapter_flag_and_the_yaml_key(
    tiny: Path, both: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grm_plugin.engines.transformers_engine as te

    applied: list[str] = []
    real = te.apply_adapter
    monkeypatch.setattr(te, "apply_adapter", lambda m, a: applied.append(str(a)) or real(m, a))
    adapter = str(both / "adapter")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(it.model_dump_json(exclude_none=True) + "\n" for it in ITEMS))
    argv = ["eval", str(data), "--model", str(tiny), "--adapter", adapter, "--samples", "1"]
    argv += ["--max-new-tokens", "16", "--out", str(tmp_path / "eval"), "--no-progress"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["n_items"] == 2
    config = tmp_path / "judge.yaml"
    config.write_text(
        f"engine: {{type: transformers, model: {tiny}, adapter: {adapter}}}\n"
        "sampling: {max_new_tokens: 16, parse_retries: 0}\n"
    )
    argv = ["eval", str(data), "--config", str(config), "--samples", "1"]
    assert main([*argv, "--out", str(tmp_path / "eval2"), "--no-progress"]) == 0
    score = ["score", "--prompt", "Say hi", "--response", "hi", "--response", "go away"]
    # random weights write no valid judgment (exit 1), but the judge ran with the adapter
    assert main([*score, "--model", str(tiny), "--adapter", adapter, "--max-new-tokens", "16"]) == 1
    assert applied == [adapter, adapter, adapter]
    with pytest.raises(SystemExit, match="local judge model"):
        main([*score, "--server", "http://127.0.0.1:9/v1", "--adapter", adapter])


def _general_file(path: Path, n: int) -> Path:
    rows = [
        {
            "id": f"g{i}",
            "messages": [
                {"role": "user", "content": f"Count to {i}."},
                {"role": "assistant", "content": " ".join(str(j) for j in range(i + 1))},
            ],
        }
        for i in range(n)
    ]
    bad = ['{"messages": [{"role": "user", "content": "no answer"}]}', "not json"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n".join(bad) + "\n")
    return path


def test_general_data_is_drawn_stably_at_its_ratio(tmp_path: Path) -> None:
    path = _general_file(tmp_path / "general.jsonl", 40)
    small, read = general_examples(path, judge_examples=10, ratio=0.5)
    assert (len(small), read.lines, read.used) == (10, 40, 10)
    assert sum(read.skipped.values()) == 2
    # more judge examples: the earlier draw is kept and extended, never reshuffled
    large, _ = general_examples(path, judge_examples=20, ratio=0.5)
    assert large[:10] == small and len(large) == 20
    other, _ = general_examples(path, judge_examples=10, ratio=0.5, seed=1)
    assert other != small
    # the file holds fewer than the ratio asks: all of it
    capped, read = general_examples(path, judge_examples=100, ratio=0.5)
    assert len(capped) == read.used == 40
    assert small[0]["completion"][0]["role"] == "assistant"


def test_sft_mixes_general_data_and_counts_it(tiny: Path, records: Path, tmp_path: Path) -> None:
    path = _general_file(tmp_path / "general.jsonl", 10)
    settings = SFTSettings(
        base=str(tiny), general_data=str(path), general_ratio=0.5, max_steps=1, save="merged"
    )
    report = train_sft(read_rft_records(records), tmp_path / "sft", settings, progress=False)
    assert (report["judge_examples"], report["general_examples"], report["examples"]) == (3, 3, 6)
    assert report["general_data"]["lines"] == 10


def test_hinted_round_draws_hint_samples_judgments(tmp_path: Path) -> None:
    def run(hint_samples: int | None) -> tuple[ScriptedJudge, object]:
        judge = ScriptedJudge({"Add 2 and 2": ("4", ["wrong"], ["right", "wrong"])})
        rm = GenerativeRewardFn(judge, samples=3, seed=0, parse_retries=0)
        out = tmp_path / f"rft-{hint_samples}.jsonl"
        counts = collect(
            rm, ITEMS[1:], out, hint_retry=True, hint_samples=hint_samples, progress=False
        )
        return judge, counts

    judge, counts = run(5)
    assert judge.used["Add 2 and 2", True] == 5 and judge.used["Add 2 and 2", False] == 3
    assert (counts.samples, counts.hinted) == (8, 1)
    judge, counts = run(None)  # default: N, as the plain round
    assert judge.used["Add 2 and 2", True] == 3 and counts.samples == 6


@pytest.mark.real_model
def test_adapter_on_smollm2_round_trips(tmp_path: Path) -> None:
    """One LoRA step on SmolLM2-135M, saved as an adapter, judges again as base + adapter."""
    import torch

    from .openai_fakes import smollm2_folder

    base = smollm2_folder()
    judge = ScriptedJudge({"Say hi": ("hi", ["right", "wrong"], [])})
    rm = GenerativeRewardFn(judge, samples=2, seed=0, parse_retries=0)
    rft = tmp_path / "rft.jsonl"
    collect(rm, ITEMS[:1], rft, progress=False)
    out = tmp_path / "sft"
    settings = SFTSettings(base=str(base), lora=LoraSettings(r=4, alpha=8), max_steps=1)
    report = train_sft(read_rft_records(rft), out, settings, progress=False)
    assert report["adapter"]["size_bytes"] < 32 * 2**20
    cfg = TransformersEngineConfig(model=str(base), adapter=str(out), device="cpu")
    judged = GenerativeRewardFn(cfg, max_new_tokens=32, parse_retries=0)
    assert judged.score("Say hi", ["hi", "go away"]).samples[0].text is not None
    assert torch.isfinite(_engine_logits(cfg)).all()


def test_sft_reports_and_warns_about_examples_max_length_drops_or_cuts(
    tiny: Path, records: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """trl truncates from the end without a word: a long prompt leaves no judgment token (the
    example is dropped), a long judgment loses its score line. Measured on the GSM8K experiment's
    records at max_length 1024: 19 of 65 dropped, 12 cut."""
    from transformers import AutoTokenizer

    from grm_plugin.spct.sft import sft_examples, too_long

    examples = sft_examples(read_rft_records(records))
    tok = AutoTokenizer.from_pretrained(tiny)
    fits = too_long(examples, tok, 100_000)
    assert (fits.dropped, fits.cut) == (0, 0) and fits.longest > 0
    prompt = len(
        tok(tok.apply_chat_template(examples[0]["prompt"], tokenize=False,
                                    add_generation_prompt=True))["input_ids"]
    )  # fmt: skip
    assert too_long(examples[:1], tok, prompt).dropped == 1
    cut = too_long(examples[:1], tok, prompt + 1)
    assert (cut.dropped, cut.cut) == (0, 1)
    settings = SFTSettings(base=str(tiny), save="adapter", max_length=fits.longest - 1, **FAST)
    with caplog.at_level("WARNING", logger="grm_plugin.spct.sft"):
        report = train_sft(read_rft_records(records), tmp_path / "sft", settings, progress=False)
    assert report["too_long"]["cut"] + report["too_long"]["dropped"] >= 1
    assert "raise sft.max_length" in caplog.text
    quiet = SFTSettings(base=str(tiny), save="adapter", **FAST)
    report = train_sft(read_rft_records(records), tmp_path / "sft2", quiet, progress=False)
    assert report["too_long"] == {**report["too_long"], "dropped": 0, "cut": 0}


def test_the_experiment_script_keeps_adapters_checked(both: Path, tmp_path: Path) -> None:
    """results/spct_gsm8k/run.sh copies adapters in and out of its ignored models/ (the RFT
    judge restored from the committed adapter_rft/, the final one published to adapter/), each
    checked against its manifest: a cut copy stops the script instead of being committed."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    r = tmp_path / "results" / "spct_gsm8k"
    r.mkdir(parents=True)
    shutil.copy(repo / "results" / "spct_gsm8k" / "run.sh", r / "run.sh")
    shutil.copytree(both / "adapter", r / "adapter_rft")
    (r / "adapter_rft" / "spct_train.json").write_text("{}\n")
    shutil.copytree(both / "adapter", r / "models" / "judge-rl")
    # the python that runs the tests, which has grm_plugin
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(r / "run.sh"), "adapter"], env=env, capture_output=True, text=True
        )

    done = run()
    assert done.returncode == 0, done.stderr
    sha = json.loads((both / "adapter" / "spct_adapter.json").read_text())["sha256"]
    for kept in (r / "models" / "judge-rft", r / "adapter"):
        assert (kept / "SHA256SUMS").read_text() == f"{sha}  adapter_model.safetensors\n"
        assert (kept / "adapter_config.json").is_file()
    assert (r / "models" / "judge-rft" / "spct_train.json").is_file()
    weights = r / "models" / "judge-rl" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    failed = run()
    assert failed.returncode != 0
    assert "do not match its spct_adapter.json" in failed.stderr


def test_the_readme_names_the_committed_gsm8k_adapter_by_its_sha256() -> None:
    """The README's sha256 is the committed adapter's (its SHA256SUMS, its manifest and the file
    itself), and the README's engine line loads as a judge config naming that folder."""
    import re

    import yaml

    from grm_plugin.config import JudgeConfig

    repo = Path(__file__).resolve().parents[1]
    folder = repo / "results" / "spct_gsm8k" / "adapter"
    if not (folder / "SHA256SUMS").is_file():
        pytest.skip("no committed GSM8K adapter in this checkout")
    readme = (repo / "README.md").read_text()
    block = readme[readme.index("**The GSM8K experiment's trained judge**") :]
    (sha,) = re.findall(r"`([0-9a-f]{64})`", block[:1200])
    weights = folder / "adapter_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sha
    assert (folder / "SHA256SUMS").read_text().split()[0] == sha
    manifest = json.loads((folder / "spct_adapter.json").read_text())
    assert manifest["sha256"] == sha and manifest["dtype"] == "bfloat16"
    assert weights.stat().st_size <= 32 * 2**20
    flow = re.search(r"`(engine: \{type: default, adapter: [^`]+)`", block).group(1)
    config = JudgeConfig.model_validate(yaml.safe_load(" ".join(flow.split())))
    assert config.engine.adapter == "results/spct_gsm8k/adapter"
    assert config.engine.constrain_scores is False
