"""ARCHITECTURE.md names only what exists: every path it gives is in the repository, and every
``file.py:name`` is defined at the top level of that file (a renamed module or function fails
here, not in a newcomer's search)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"
# a backticked repository path: a folder ending in "/", or a file with an extension, optionally
# followed by ":name"; "<framework>" and "*" are placeholders, checked by their fixed prefix
_PATH = re.compile(r"`((?:grm_plugin|adapters|tests)/[\w/.<>*-]*|noxfile\.py)(?::(\w+))?`")


def _named() -> list[tuple[str, str | None]]:
    return sorted(set(_PATH.findall(DOC.read_text(encoding="utf-8"))))


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_doc_names_paths():
    assert len(_named()) > 30  # the pattern still finds them: an empty list checks nothing


@pytest.mark.parametrize(("path", "name"), _named(), ids=lambda v: v or "")
def test_named_path_exists(path, name):
    fixed = re.split(r"[<*]", path, maxsplit=1)[0]
    target = ROOT / fixed
    if fixed == path:
        assert target.exists(), f"ARCHITECTURE.md names {path}, which does not exist"
    else:  # a placeholder: its fixed part must exist (a folder, or files starting with it)
        assert target.exists() or any(target.parent.glob(target.name + "*")), path
    if name:
        assert name in _top_level_names(target), f"{name} is not defined in {path}"
