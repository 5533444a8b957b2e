"""The first command, tried as a new user would (issue 21: items 15, 21, 22, 24, 27, 28, 29)."""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from grm_plugin import GenerativeRewardFn, JudgeConfig, TransformersEngineConfig

from .test_readme import ROOT, readme_commands
from .tiny_model import build_tiny_model

# ------------------------------------------------------------------ 15: empty_response_score


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, 11.0, -3.0])
def test_empty_response_score_outside_the_scale_is_refused(bad: float) -> None:
    with pytest.raises(ValidationError, match="empty_response_score"):
        JudgeConfig(empty_response_score=bad)
    with pytest.raises(ValueError, match="empty_response_score"):
        GenerativeRewardFn(_rule_engine(), empty_response_score=bad)


@pytest.mark.parametrize("good", [None, 1.0, 5.5, 10])
def test_empty_response_score_on_the_scale_is_kept(good: float | None) -> None:
    assert JudgeConfig(empty_response_score=good).empty_response_score == good
    assert (
        GenerativeRewardFn(_rule_engine(), empty_response_score=good).empty_response_score == good
    )


def _rule_engine():
    from grm_plugin.testing import RuleJudgeEngine

    return RuleJudgeEngine()


# ------------------------------------------------------------------ 21: comments that lie


def test_comments_name_only_real_generation_request_fields() -> None:
    from dataclasses import fields

    from grm_plugin.engines.base import GenerationRequest

    real = {f.name for f in fields(GenerationRequest)} | {
        n for n in vars(GenerationRequest) if not n.startswith("_")
    }
    named = set()
    for path in (ROOT / "grm_plugin").rglob("*.py"):
        named |= {(path.name, m) for m in re.findall(r"GenerationRequest\.(\w+)", path.read_text())}
    assert {(p, m) for p, m in named if m not in real} == set()


def test_meta_rm_model_has_no_dead_public_functions() -> None:
    """Every public top-level function of meta_rm_model is used somewhere else."""
    module = ROOT / "grm_plugin" / "meta_rm" / "model.py"
    tree = ast.parse(module.read_text())
    public = [
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
    ]
    others = [
        p.read_text()
        for folder in ("grm_plugin", "adapters", "tests", "benchmarks", "results", "examples")
        for p in (ROOT / folder).rglob("*.py")
        if p != module and ".nox" not in p.parts
    ]
    own = module.read_text()
    unused = [
        name
        for name in public
        if len(re.findall(rf"\b{name}\b", own)) < 2  # its def, and a use in the module
        and not any(re.search(rf"\b{name}\b", t) for t in others)
    ]
    assert unused == []


# ------------------------------------------------------------------ 22: CPU torch route


def test_readme_gives_the_cpu_wheel_route_for_a_plain_machine() -> None:
    readme = (ROOT / "README.md").read_text()
    top = readme.split("## What it is")[0]
    # the plain-machine route: PyPI's Linux torch wheel is the CUDA build (+ nvidia-* packages)
    assert "--index-url https://download.pytorch.org/whl/cpu" in top
    for cmd in readme_commands():
        assert cmd.startswith(
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
        ), cmd


def test_ci_runs_the_readme_test_command_with_this_machines_torch_route() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    torch_part, rest = readme_commands()[1].split(" && ", 1)
    # the README's torch route, or the plain pin where that resolves CPU-only (.ci/torch_route.py)
    assert f"$TORCH_INSTALL && {rest}" in ci
    assert 'TORCH_INSTALL="$(python .ci/torch_route.py)"' in ci
    route = _torch_route()
    assert route.CPU_INDEX == torch_part and route.PLAIN == "pip install torch==2.13.0"


def _torch_route():
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_route", ROOT / ".ci" / "torch_route.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_route_takes_the_plain_pin_only_when_it_resolves_cpu_only(monkeypatch) -> None:
    route = _torch_route()
    cuda = {"torch": "2.13.0", "nvidia-cublas": "13.1.1.3"}  # what PyPI gives a plain machine
    local = {"torch": "2.13.0+cpu", "sympy": "1.14.0"}  # a local CPU wheel folder (ours)
    for resolved, expected in [
        (cuda, route.CPU_INDEX),
        (local, route.PLAIN),
        (None, route.CPU_INDEX),
    ]:
        monkeypatch.setattr(route, "resolution", lambda cmd, r=resolved: r)
        assert route.route() == expected


@pytest.mark.real_model
def test_torch_route_here_resolves_no_cuda_package() -> None:
    """``pip install --dry-run --report`` of the torch command CI runs on this machine: a ``+cpu``
    torch and no ``nvidia-*`` package (network: PyPI, and PyTorch's CPU index if chosen)."""
    route = _torch_route()
    command = route.route()
    resolved = route.resolution(command)
    if resolved is None:
        pytest.skip(f"pip cannot resolve {command!r} here (no network to its index?)")
    assert not [n for n in resolved if n.startswith("nvidia-")], resolved
    assert resolved["torch"].endswith("+cpu"), resolved["torch"]
    # the README's `python .ci/torch_route.py --check`, as written
    done = subprocess.run(
        [sys.executable, ".ci/torch_route.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip() == command, done.stderr


def test_readme_says_what_the_first_command_shows() -> None:
    """The README's demo is measured on its own example, with the exact command, and the
    README's claim matches the measurement."""
    top = (ROOT / "README.md").read_text().split("## What it is")[0]
    assert "benchmarks/results/first_command_demo.md" in top
    measured = (ROOT / "benchmarks" / "results" / "first_command_demo.md").read_text()
    command = readme_commands()[0].split(" && ")[-1]
    assert command in measured
    m = re.search(r"Paris ranked first in (\d+) of (\d+) runs", measured)
    assert m, "the measurement gives no count of runs that ranked Paris first"
    words = {1: "once", 2: "twice"}
    said = words.get(int(m.group(1)), f"{m.group(1)} times")
    assert f"Run {m.group(2)} times" in " ".join(top.split()) and f"Paris first {said}" in top


# ------------------------------------------------------------------ 24: seeded runs reproduce


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _texts(folder: Path, batch_wait: float, seed: int) -> list[str]:
    from grm_plugin.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(
        TransformersEngineConfig(model=str(folder), batch_wait=batch_wait, score_prefill=True)
    )
    rm = GenerativeRewardFn(
        engine, samples=4, temperature=1.0, max_new_tokens=16, parse_retries=1, seed=seed
    )
    res = rm.score("What is the capital of France?", ["Paris.", "Berlin."])
    return [s.text or "" for s in res.samples]


def test_same_seed_same_judge_text_on_the_transformers_engine(tiny_folder: Path) -> None:
    # batch_wait 0 vs 0.3: the two response orders are generated apart or coalesced into one
    # batch; a seeded judgment must not depend on that (nor on the prompt's nonce)
    first = _texts(tiny_folder, 0.0, seed=7)
    assert len(first) >= 4 and any(first)
    assert _texts(tiny_folder, 0.3, seed=7) == first
    assert _texts(tiny_folder, 0.0, seed=8) != first


# ------------------------------------------------------------------ 27: a first run that speaks


def test_first_use_says_what_it_is_doing(tmp_path, monkeypatch, capsys, tiny_folder) -> None:
    from grm_plugin import default_judge

    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(bytes([i]) * 1000)
        parts.append(part)
    import hashlib

    whole = b"".join(p.read_bytes() for p in parts)
    monkeypatch.setenv("GRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default_judge, "_part_files", lambda: parts)
    monkeypatch.setattr(default_judge, "SIZE", len(whole))
    monkeypatch.setattr(default_judge, "SHA256", hashlib.sha256(whole).hexdigest())
    path = default_judge.default_judge_path()
    assert path.read_bytes() == whole
    err = capsys.readouterr().err
    assert "assembling the embedded judge" in err and "once" in err
    default_judge.default_judge_path()  # cached: nothing to say
    assert capsys.readouterr().err == ""

    _fake_gguf_loading(monkeypatch, tiny_folder)
    from grm_plugin.engines.transformers_engine import convert_gguf

    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    convert_gguf(gguf)
    err = capsys.readouterr().err
    assert "converting" in err and "once" in err and "min" in err and "done in" in err


def test_cli_says_it_is_loading_a_local_judge(tiny_folder: Path, capsys) -> None:
    from grm_plugin.cli.main import main

    argv = ["score", "--prompt", "q", "--response", "a", "--model", str(tiny_folder)]
    main(argv + ["--max-new-tokens", "16", "--no-stream"])
    assert "grm-plugin: loading the judge model" in capsys.readouterr().err


# ------------------------------------------------------------------ 29: two converters at once


_ONE_LOAD_AT_A_TIME = threading.Lock()


def _fake_gguf_loading(monkeypatch, tiny_folder: Path, barrier=None, fail: bool = False) -> None:
    """transformers' GGUF loading replaced by the tiny model (the conversion code is real)."""
    import transformers

    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained

    def model(src, *a, gguf_file=None, **kw):
        if gguf_file is None:
            return real_model(src, *a, **kw)
        if barrier is not None:
            barrier.wait(timeout=60)  # both converters got past the "already converted?" check
        # one load at a time: transformers' from_pretrained swaps process-wide state while it
        # builds a model (weights first made on the meta device); two threads in it at once
        # can leave that state behind, and a later test's model then loads with meta tensors
        with _ONE_LOAD_AT_A_TIME:
            m = real_model(tiny_folder, **kw)
        if fail:
            m.save_pretrained = _fail_after_writing(m.save_pretrained)
        return m

    def tok(src, *a, gguf_file=None, **kw):
        return real_tok(tiny_folder if gguf_file else src, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok)


def _fail_after_writing(save):
    def broken(folder, *a, **kw):
        save(folder, *a, **kw)
        raise OSError(28, "No space left on device")

    return broken


def test_two_converters_at_once_share_one_result(tmp_path, monkeypatch, tiny_folder) -> None:
    from grm_plugin.engines import transformers_engine as te

    monkeypatch.setenv("GRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    # both start together (in one process: the same pid, which the old temporary name used);
    # with the lock the second waits and reuses the first one's folder
    barrier = threading.Barrier(2)
    _fake_gguf_loading(monkeypatch, tiny_folder, barrier=None)
    results, errors = [], []

    def convert() -> None:
        try:
            barrier.wait(timeout=60)  # start together
            results.append(te.convert_gguf(gguf))
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert (results[0] / "config.json").is_file()
    assert [p.name for p in results[0].parent.iterdir() if ".tmp" in p.name] == []


def test_a_finished_twin_is_kept_when_the_rename_loses(tmp_path, monkeypatch, tiny_folder):
    """Without the lock (another machine on a shared cache): both convert, the second rename
    finds the folder there and keeps it."""
    from grm_plugin.engines import transformers_engine as te

    monkeypatch.setenv("GRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    barrier = threading.Barrier(2)
    _fake_gguf_loading(monkeypatch, tiny_folder, barrier=barrier)
    monkeypatch.setattr(te, "_conversion_lock", lambda target: _NoLock())
    results, errors = [], []

    def convert() -> None:
        try:
            results.append(te.convert_gguf(gguf))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert [p.name for p in results[0].parent.iterdir() if ".tmp" in p.name] == []


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_failed_conversion_leaves_no_temporary_folder(tmp_path, monkeypatch, tiny_folder):
    from grm_plugin.engines import transformers_engine as te

    monkeypatch.setenv("GRM_PLUGIN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    _fake_gguf_loading(monkeypatch, tiny_folder, fail=True)
    with pytest.raises(OSError, match="No space left"):
        te.convert_gguf(gguf)
    left = list((tmp_path / "cache" / "converted").iterdir())
    assert [p.name for p in left if not p.name.endswith(".lock")] == []


def test_two_processes_convert_at_once(tmp_path, tiny_folder) -> None:
    """Two real processes (the crash users hit): both succeed, one folder, no temporary left."""
    script = tmp_path / "convert.py"
    script.write_text(
        "import sys, pytest\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.test_defects_first_command import _fake_gguf_loading\n"
        "from pathlib import Path\n"
        "mp = pytest.MonkeyPatch()\n"
        "_fake_gguf_loading(mp, Path(sys.argv[1]))\n"
        "from grm_plugin.engines.transformers_engine import convert_gguf\n"
        "print(convert_gguf(Path(sys.argv[2])))\n"
    )
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    env = {**os.environ, "GRM_PLUGIN_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tiny_folder), str(gguf)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    assert outs[0][0] == outs[1][0]
    folder = Path(outs[0][0].strip())
    assert (folder / "config.json").is_file()
    assert [p.name for p in folder.parent.iterdir() if ".tmp" in p.name] == []


# ------------------------------------------------------------------ 28: docs a user can follow


def test_readme_install_from_a_clone_works_from_inside_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install ./grm-plugin" not in readme


def test_readme_says_where_the_dev_data_comes_from() -> None:
    for path in (ROOT / "README.md", ROOT / "results" / "spct" / "README.md"):
        text = path.read_text()
        if "shared/data" in text:
            assert "LLMBar" in text, f"{path} points at shared/data without saying what it is"


def test_grouping_savings_does_not_overwrite_the_tracked_results(tmp_path) -> None:
    """Run from a folder shaped like the repo: the default output is not the committed file."""
    script = ROOT / "benchmarks" / "grouping_savings.py"
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, str(script), "--prompts", "4", "--samples", "2", "--epochs", "1"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "benchmarks" / "results" / "grouping_savings.json").exists()
    written = list((tmp_path / "tmp").rglob("grouping_savings.json"))
    assert written and str(written[0]) in done.stdout
