"""Print the command that installs a CPU build of torch 2.13.0 on this machine.

PyPI's Linux torch wheel is the CUDA build (526.6 MB plus ~15 nvidia-* packages), so the
README installs torch from PyTorch's CPU index. Machines that reach PyPI only (ours: their
pip config names a local folder of CPU wheels, ``find-links``) cannot use that index; there a
plain ``pip install torch==2.13.0`` resolves the local ``+cpu`` wheel. That plain command is
printed only when a dry run (``pip install --dry-run --report``) shows it resolves a ``+cpu``
torch and no nvidia-* package; otherwise the README's CPU-index command is printed.

    python .ci/torch_route.py          # prints the command
    python .ci/torch_route.py --check  # exits 1 unless the printed command resolves CPU-only
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH = "torch==2.13.0"
PLAIN = f"pip install {TORCH}"
CPU_INDEX = f"{PLAIN} --index-url https://download.pytorch.org/whl/cpu"


def resolution(command: str) -> dict[str, str] | None:
    """name -> version of what ``command`` (a ``pip install``) would install on this machine,
    from scratch; None when pip cannot resolve it (e.g. the index is out of reach)."""
    argv = shlex.split(command)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "pip", *argv[1:], "--dry-run", "--ignore-installed"]
            + ["--quiet", "--report", str(report)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not report.is_file():
            return None
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


def cpu_only(resolved: dict[str, str] | None) -> bool:
    """A ``+cpu`` torch and no nvidia-* package."""
    return (
        resolved is not None
        and resolved.get("torch", "").endswith("+cpu")
        and not any(name.startswith("nvidia-") for name in resolved)
    )


def route() -> str:
    return PLAIN if cpu_only(resolution(PLAIN)) else CPU_INDEX


if __name__ == "__main__":
    command = route()
    if "--check" in sys.argv[1:] and not cpu_only(resolution(command)):
        sys.exit(f"{command!r} does not resolve to a CPU-only torch here")
    print(command)
