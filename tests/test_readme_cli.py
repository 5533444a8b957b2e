"""Every ``grm-plugin`` command shown in the README and the example scripts parses with the real
CLI parser, exactly as written (flags that do not exist, or were renamed, fail here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from grm_plugin.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
_SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)


def _logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def shown_commands() -> list[tuple[str, str]]:
    """(where, command) for every grm-plugin invocation in README code blocks and examples/*.sh."""
    sources = [("README.md", b) for b in _SHELL_BLOCK.findall((ROOT / "README.md").read_text())]
    sources += [(p.name, p.read_text()) for p in sorted((ROOT / "examples").rglob("*.sh"))]
    found = []
    for where, text in sources:
        for line in _logical_lines(text):
            # commands may follow `&&` (the README's first command) or start the line
            for part in re.split(r"&&|\|\||;", line):
                part = part.strip()
                if part.startswith("grm-plugin "):
                    # a trailing `&` only puts the command in the background
                    found.append((where, part.split(" #", 1)[0].strip().removesuffix("&").strip()))
    return found


def test_commands_are_found() -> None:
    assert any(cmd.startswith("grm-plugin score") for _, cmd in shown_commands())


@pytest.mark.parametrize(("where", "command"), shown_commands())
def test_shown_command_parses(where: str, command: str) -> None:
    argv = shlex.split(command)[1:]
    if any(a.startswith("$") or "${" in a for a in argv):
        # shell variables in example scripts: substitute a plausible value of the same kind
        argv = [re.sub(r"\$\{?\w+\}?", "1", a) for a in argv]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on an unknown flag or a bad value
        pytest.fail(f"{where}: `{command}` does not parse (exit {e.code})")
