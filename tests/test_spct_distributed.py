"""SPCT beyond one machine: `spct sft` and `spct rl` under `accelerate launch` with 2 processes
(CPU, gloo) on a tiny model, exactly as the README shows the command; the example accelerate
configs and the README's GPU config checked key by key against accelerate's and trl's own
config classes; collect, make-pairs and eval spread over several OpenAI-compatible servers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from grm_plugin.cli.main import build_parser, main
from grm_plugin.spct import SPCTItem
from grm_plugin.spct.config import SPCTConfig
from grm_plugin.testing import SimServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CPU_CONFIG = "examples/accelerate_cpu_2proc.yaml"

ITEMS = [
    SPCTItem(id="a", prompt="Say hi", responses=["hi", "go away"], best=0),
    SPCTItem(id="b", prompt="Add 2 and 2", responses=["5", "4"], best=1),
]


def _readme_bash() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), re.S))


def accelerate_commands() -> list[str]:
    """Every `accelerate launch` line of the README's shell blocks."""
    lines = _readme_bash().replace("\\\n", " ").splitlines()
    return [ln.split(" #", 1)[0].strip() for ln in lines if ln.startswith("accelerate launch ")]


def _launch_parts(command: str) -> tuple[SimpleNamespace, list[str]]:
    """(accelerate's parsed launch arguments, the grm-plugin arguments)."""
    from accelerate.commands.launch import launch_command_parser

    argv = shlex.split(command)
    assert argv[:2] == ["accelerate", "launch"], command
    args = launch_command_parser().parse_args(argv[2:])
    return args, list(args.training_script_args)


def _readme_command(stage: str) -> str:
    found = [c for c in accelerate_commands() if CPU_CONFIG in c and f" spct {stage} " in c]
    assert len(found) == 1, f"the README shows no (or several) 2-process `spct {stage}`"
    return found[0]


# ------------------------------------------------------------------ the 2-process run (CPU, gloo)


def _run_launch(command: str, extra: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a README `accelerate launch` command with ``extra`` flags (later flags win) in
    ``cwd``; the example config is the repository's."""
    argv = shlex.split(command)
    argv = [str(ROOT / a) if a.startswith("examples/") else a for a in argv]
    # the `accelerate` next to this interpreter, whatever PATH says
    argv = [sys.executable, "-m", "accelerate.commands.accelerate_cli", *argv[1:], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """sft then rl on the tiny model, each as 2 processes, run once for the tests below."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from grm_plugin import GenerativeRewardFn
    from grm_plugin.spct import collect

    from .spct_fakes import ScriptedJudge
    from .tiny_model import build_tiny_model

    work = tmp_path_factory.mktemp("launch")
    tiny = build_tiny_model(work / "tiny")
    judge = ScriptedJudge(
        {
            "Say hi": ("hi", ["right", "wrong", "wrong"], []),
            "Add 2 and 2": ("4", ["wrong", "wrong", "wrong"], ["right", "wrong", "right"]),
        }
    )
    rm = GenerativeRewardFn(judge, samples=3, seed=0, parse_retries=0)
    counts = collect(rm, ITEMS, work / "rft.jsonl", hint_retry=True, progress=False)
    assert counts.kept == 3
    (work / "train.jsonl").write_text(
        "".join(it.model_dump_json(exclude_none=True) + "\n" for it in ITEMS)
    )
    sft = _run_launch(
        _readme_command("sft"),
        ["--base", str(tiny), "--lora", "--max-steps", "2", "--no-progress"],
        work,
    )
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-6000:]
    rl = _run_launch(
        _readme_command("rl"),
        ["--steps", "2", "--group-size", "2", "--max-completion-length", "16", "--no-progress"],
        work,
    )
    assert rl.returncode == 0, rl.stdout[-3000:] + rl.stderr[-6000:]
    return {"work": work, "sft": sft, "rl": rl}


def _report(folder: Path) -> dict:
    return json.loads((folder / "spct_train.json").read_text())


def _loads_as_judge(folder: Path) -> None:
    from grm_plugin import GenerativeRewardFn

    rm = GenerativeRewardFn(str(folder), max_new_tokens=16, parse_retries=0)
    result = rm.score("Say hi", ["hi", "go away"])
    assert result.samples and result.samples[0].text is not None


def test_sft_under_accelerate_launch_trains_on_2_processes(trained: dict) -> None:
    work, printed = trained["work"], trained["sft"].stdout
    # the README's command names judge-sft as its output, in the folder it was run in
    report = _report(work / "judge-sft")
    assert report["processes"] == 2 and report["steps"] == 2
    # 3 examples, 1 per process per step: 2 processes finish the epoch in 2 steps (1 alone: 3)
    assert max(h.get("epoch", 0) for h in report["log_history"]) == pytest.approx(1.0)
    # both ranks ran to the end; the folder was written once, with nothing left half-written
    assert printed.count("sft: 3 examples, 2 steps") == 2
    assert not (work / "judge-sft.tmp").exists()
    _loads_as_judge(work / "judge-sft")


def test_rl_under_accelerate_launch_trains_on_2_processes(trained: dict) -> None:
    work, printed = trained["work"], trained["rl"].stdout
    report = _report(work / "judge-rl")
    assert report["processes"] == 2 and report["steps"] == 2
    # a row per prompt per process per step: no row (no response order) is used twice
    assert report["rows"] == 2 * 2 and report["settings"]["base"] == "judge-sft"
    assert printed.count("rl: 2 steps") == 2
    assert not (work / "judge-rl.tmp").exists()
    _loads_as_judge(work / "judge-rl")


class _FakeAccelerator:
    def __init__(self, main: bool) -> None:
        self.is_main_process = main
        self.barriers = 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


def test_only_the_main_process_writes_the_judge(tmp_path: Path) -> None:
    """Every rank calls save_judge; a non-main one writes nothing and waits for the main one."""
    from grm_plugin.spct._train import save_judge

    class Saves:
        def __init__(self) -> None:
            self.padding_side = "right"

        def save_pretrained(self, folder: Path) -> None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "weights").write_text("w")

    other = _FakeAccelerator(main=False)
    save_judge(Saves(), Saves(), tmp_path / "judge", {"stage": "sft"}, other)
    assert other.barriers == 1 and list(tmp_path.iterdir()) == []
    main_rank = _FakeAccelerator(main=True)
    save_judge(Saves(), Saves(), tmp_path / "judge", {"stage": "sft"}, main_rank)
    assert main_rank.barriers == 1
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == ["spct_train.json", "weights"]


def test_sharded_save_path_merges_the_gathered_adapter_like_the_plain_one(tmp_path: Path) -> None:
    """The FSDP / ZeRO-3 save (trainer.save_model gathers, the main process merges the LoRA
    adapter into a fresh base) writes the same judge as the plain save. Run here without
    sharding (no GPU): the gather itself is trl/accelerate's."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from datasets import Dataset
    from safetensors.torch import load_file
    from trl import SFTConfig, SFTTrainer

    from grm_plugin.spct import LoraSettings
    from grm_plugin.spct._train import load_base, peft_config, save_trained_judge

    from .tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    model, tok = load_base(str(tiny), "cpu")
    chat = [{"role": "user", "content": "Say hi"}]
    examples = [{"prompt": chat, "completion": [{"role": "assistant", "content": "hi [[9]]"}]}]
    args = SFTConfig(
        output_dir=str(tmp_path / "work"),
        max_steps=1,
        learning_rate=0.05,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    lora = peft_config(LoraSettings(r=4, alpha=8))
    lora.init_lora_weights = False  # nonzero B: the merge changes the weights
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=lora,
    )
    trainer.train()
    save_trained_judge(trainer, tok, tmp_path / "sharded", {"stage": "sft"}, str(tiny), True)
    assert not (tmp_path / "sharded.gathered").exists()
    save_trained_judge(trainer, tok, tmp_path / "plain", {"stage": "sft"}, str(tiny))
    sharded = load_file(tmp_path / "sharded" / "model.safetensors")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    base = load_file(tiny / "model.safetensors")
    assert sharded.keys() == plain.keys()
    for key in plain:
        assert (sharded[key] - plain[key]).abs().max() < 1e-5, key
    assert any((plain[k] - base[k]).abs().max() > 1e-4 for k in base)  # LoRA was merged in
    _loads_as_judge(tmp_path / "sharded")


# ---------------------------------------------------------------- configs checked key by key


def _example_accelerate_configs() -> list[Path]:
    return sorted((ROOT / "examples").glob("accelerate_*.yaml"))


def test_the_readme_shows_each_accelerate_config() -> None:
    shown = " ".join(accelerate_commands())
    configs = _example_accelerate_configs()
    assert len(configs) >= 2
    for path in configs:
        assert f"examples/{path.name}" in shown, f"{path.name} is not shown in the README"


@pytest.mark.parametrize("path", _example_accelerate_configs(), ids=lambda p: p.name)
def test_example_accelerate_config_keys_are_real(path: Path) -> None:
    """Top-level keys by accelerate's own loader (it refuses unknown ones); nested sections
    (fsdp_config, deepspeed_config), which accelerate copies onto its launch arguments without
    a check, against those arguments."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(str(path))
    dests = {a.dest for a in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            # accelerate's rule: fsdp_config.x is the launch argument fsdp_x
            name = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            assert name in dests, f"{path.name}: {section}.{key} is no accelerate launch argument"
    # the sharded save needs whole weights gathered (the README says so)
    if config.distributed_type.value == "FSDP":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if config.distributed_type.value == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
    if path.name == Path(CPU_CONFIG).name:
        # torchrun starts the processes (accelerate's CPU type would need MPI); any free port
        assert (config.num_processes, config.main_process_port) == (2, 0)
        assert config.distributed_type.value == "MULTI_GPU" and config.mixed_precision == "no"


@pytest.mark.parametrize("command", accelerate_commands())
def test_readme_accelerate_command_parses(command: str) -> None:
    """Both halves as written: accelerate's launch arguments and the grm-plugin command."""
    args, script_args = _launch_parts(command)
    assert args.module and args.training_script == "grm_plugin.cli.main"
    assert (ROOT / args.config_file).is_file(), args.config_file
    try:
        build_parser().parse_args(script_args)
    except SystemExit as e:
        pytest.fail(f"`{command}`: the grm-plugin part does not parse (exit {e.code})")
    for flag in ("--config",):
        if flag in script_args:
            given = script_args[script_args.index(flag) + 1]
            assert given in _spct_yaml_blocks(), f"{given} is not shown in the README"


def _spct_yaml_blocks() -> dict[str, str]:
    """README yaml blocks whose first line is `# <name>.yaml ...` naming an spct config."""
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S):
        first = block.splitlines()[0]
        match = re.match(r"# (\S*spct\S*\.yaml)", first)
        if match:
            out[match.group(1)] = block
    return out


def test_readme_gpu_spct_config_keys_are_real(tmp_path: Path) -> None:
    """The spct YAML shown for GPUs loads as an SPCT config, and every key of its sft/rl `trl`
    sections is a field of trl's SFTConfig / GRPOConfig that no other setting sets."""
    pytest.importorskip("trl")
    from trl import GRPOConfig, SFTConfig

    blocks = _spct_yaml_blocks()
    assert blocks, "the README shows no spct YAML for GPUs"
    for name, block in blocks.items():
        cfg = SPCTConfig.model_validate(yaml.safe_load(block))
        assert cfg.rl.trl.get("use_vllm") is True, name  # the point of the block
        for section, cls in (("sft", SFTConfig), ("rl", GRPOConfig)):
            fields = {f.name for f in dataclasses.fields(cls)}
            for key in getattr(cfg, section).trl:
                assert key in fields, f"{name}: {section}.trl.{key} is no trl {cls.__name__} field"
        # trl does not check vllm_mode itself; its __post_init__ checks the rest
        assert cfg.rl.trl.get("vllm_mode", "colocate") in ("colocate", "server")
        GRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            num_generations=2,
            per_device_train_batch_size=2,
            **cfg.rl.trl,
        )
        SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **cfg.sft.trl)


def test_trl_section_reaches_the_trainer_and_refuses_what_it_must(tmp_path: Path) -> None:
    """sft.trl fields land in trl's SFTConfig; one that another setting owns, or that trl lacks,
    is refused before training."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from transformers import TrainerCallback

    from grm_plugin import GenerativeRewardFn
    from grm_plugin.spct import SFTSettings, collect
    from grm_plugin.spct.collect import read_rft_records
    from grm_plugin.spct.sft import train_sft

    from .spct_fakes import ScriptedJudge
    from .tiny_model import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    judge = ScriptedJudge({"Say hi": ("hi", ["right", "wrong", "wrong"], [])})
    rm = GenerativeRewardFn(judge, samples=3, seed=0, parse_retries=0)
    collect(rm, ITEMS[:1], tmp_path / "rft.jsonl", progress=False)
    records = read_rft_records(tmp_path / "rft.jsonl")

    seen = {}

    class Seen(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            seen["max_grad_norm"] = args.max_grad_norm

    settings = SFTSettings(base=str(tiny), max_steps=1, trl={"max_grad_norm": 0.25})
    train_sft(records, tmp_path / "sft", settings, progress=False, callbacks=[Seen()])
    assert seen == {"max_grad_norm": 0.25}
    for bad, says in (({"learning_rate": 1.0}, "set by other settings"), ({"nope": 1}, "not")):
        settings = SFTSettings(base=str(tiny), max_steps=1, trl=bad)
        with pytest.raises(ValueError, match=says):
            train_sft(records, tmp_path / "sft2", settings, progress=False)


# ------------------------------------------------------------ several OpenAI-compatible servers

#: fast, but each request takes a little while, so requests overlap and spread over replicas
SLOWISH = {
    "decode_tps": 1e6,
    "decode_tps_per_seq": 1e5,
    "output_tokens": 8,
    "request_overhead": 0.05,
}


def _items_file(path: Path, n: int) -> Path:
    lines = [
        SPCTItem(id=f"i{i}", prompt=f"Say hi {i}", responses=["hi", "go away " * 3], best=0)
        for i in range(n)
    ]
    path.write_text("".join(it.model_dump_json(exclude_none=True) + "\n" for it in lines))
    return path


def test_collect_spreads_over_two_servers_listed_in_the_config(tmp_path: Path) -> None:
    """`spct collect` with the judge engine's base_url a list of 2 servers: both are used."""
    data = _items_file(tmp_path / "train.jsonl", 12)
    with SimServer({"capacity": SLOWISH}) as one, SimServer({"capacity": SLOWISH}) as two:
        config = tmp_path / "spct.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "judge": {
                        "engine": {"type": "openai", "base_url": [one.url, two.url]},
                        "deadline": {"request": 30.0},
                    },
                    "collect": {"samples": 2, "chunk_size": 8},
                }
            )
        )
        argv = ["spct", "collect", str(data), "--out", str(tmp_path / "rft.jsonl")]
        assert main([*argv, "--config", str(config), "--no-progress"]) == 0
        served = (one.stats().answered, two.stats().answered)
    counts = json.loads((tmp_path / "rft.counts.json").read_text())
    assert counts["items_done"] == 12 and counts["engine_failed_items"] == 0
    assert all(n > 0 for n in served), served
    assert sum(served) >= 12  # every item judged (n=2 in one request or two)


def test_make_pairs_and_eval_spread_over_two_servers(tmp_path: Path) -> None:
    """`spct make-pairs` and `grm-plugin eval` with --server given twice: both servers used."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "question": f"What is {i} + 1?",
                    "answer": str(i + 1),
                    "solution": f"{i} + 1 = {i + 1}",
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    data = _items_file(tmp_path / "heldout.jsonl", 8)
    with SimServer({"capacity": SLOWISH}) as one, SimServer({"capacity": SLOWISH}) as two:
        servers = ["--server", one.url, "--server", two.url]
        argv = ["spct", "make-pairs", str(problems), "--out", str(tmp_path / "pairs.jsonl")]
        assert main([*argv, *servers, "--samples", "2", "--no-progress"]) == 0
        after_make_pairs = (one.stats().answered, two.stats().answered)
        argv = ["eval", str(data), "--samples", "2", "--out", str(tmp_path / "eval")]
        assert main([*argv, *servers, "--no-progress"]) == 0
        after_eval = (one.stats().answered, two.stats().answered)
    assert all(n > 0 for n in after_make_pairs), after_make_pairs
    assert all(b > a for a, b in zip(after_make_pairs, after_eval, strict=True)), after_eval
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n_items"] == 8
