"""Reads a committed experiment ``run.sh`` so a test can parse the commands it runs.

The scripts are plain bash; rather than run them (hours of real models), the tests expand the
script's own variables into each command line and hand the words to our CLI parser. One reader
for every such script, so a new kind of assignment is taught once.
"""

from __future__ import annotations

import re
from pathlib import Path

_ASSIGNMENT = re.compile(r"^([A-Za-z_]+)=(\S+)$", flags=re.M)
_DEFAULTED = re.compile(r"^\$\{[A-Za-z_]+:-(.*)\}$")  # NAME=${NAME:-default}: the default
_REFERENCE = re.compile(r"\$\{?([A-Za-z_]+)\}?")


def script_text(path: Path) -> str:
    """The script with its line continuations joined, so each command is one line."""
    return path.read_text().replace("\\\n", " ")


def assignments(text: str) -> dict[str, str]:
    """The script's ``NAME=value`` lines (an overridable ``${NAME:-default}`` gives its
    default); arrays and values with spaces are left to the caller."""
    names = {}
    for name, value in _ASSIGNMENT.findall(text):
        if value.startswith("("):
            continue
        defaulted = _DEFAULTED.match(value)
        names[name] = defaulted.group(1) if defaulted else value
    return names


def expand(line: str, names: dict[str, str]) -> str:
    """``line`` with every ``$NAME`` / ``${NAME}`` replaced from ``names``, repeatedly (names
    defined in terms of others, as ``HN=$OUT/...``); fails on one it does not know."""
    for _ in range(4):
        line = _REFERENCE.sub(lambda m: names.get(m.group(1), m.group(0)), line)
    assert "$" not in line, f"unexpanded name in: {line}"
    return line
